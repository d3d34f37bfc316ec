"""Whether fine-tuning steps run under bf16 autocast: always on a GPU (``run.amp_bf16``), and on a CPU
only when asked (``seg.cpu_bf16``) and the CPU computes bf16 natively (AVX512-BF16 or AMX), where a
Swin UNETR step takes about 0.6 of the time; elsewhere bf16 is emulated and slower. Pretraining on a
CPU stays float32: its step, mostly attention, measured no faster in bf16."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from swinray.config import FinetuneConfig


def cpu_has_native_bf16() -> bool:
    return any(bool(getattr(torch.cpu, probe, lambda: False)())
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_name() -> str:
    """This machine's CPU model and its bf16 instructions, from Linux's /proc/cpuinfo ("" elsewhere),
    e.g. "AMD EPYC (avx512_bf16)": bf16 steps round as these kernels do, so a run's path depends on them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    bf16 = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    return f"{model} ({', '.join(bf16) or 'no bf16 instructions'})" if model else ""


def finetune_autocast(cfg: FinetuneConfig, device: torch.device, native_bf16: Callable[[], bool] = cpu_has_native_bf16
                      ) -> tuple[bool, str]:
    """(autocast or not, a warning for the user when ``seg.cpu_bf16`` cannot be honoured, else "")."""
    if not cfg.run.amp_bf16:
        return False, ""
    if device.type == "cuda":
        return True, ""
    if not cfg.seg.cpu_bf16:
        return False, ""
    if native_bf16():
        return True, ""
    cut_short = (" (a preset sized for bf16 may reach seg.max_minutes before optim.num_steps, its learning "
                 "rate not yet decayed: see docs/training.md for float32 settings)"
                 if cfg.seg.max_minutes > 0 and not cfg.seg.schedule_within_max_minutes else "")
    return False, ("seg.cpu_bf16 is on, but this CPU has no native bf16 (AVX512-BF16 or AMX) and would "
                   "emulate it, slower than float32: training stays float32, at about 1.7x the time per step "
                   "on the same CPU" + cut_short)


def float32_bottleneck(net: torch.nn.Module) -> None:
    """Run Swin UNETR's bottleneck block (``encoder10``, on the 1/32-scale features) in float32 under CPU
    autocast. torch 2.13's CPU bf16 backward of its 3^3 convolution on 2^3 voxels returns infinite weight
    gradients in about 1 step in 15, which would stop the run as diverged; the block costs next to nothing."""
    block = net.encoder10
    forward = block.forward

    def in_float32(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return forward(x.float())

    block.forward = in_float32
