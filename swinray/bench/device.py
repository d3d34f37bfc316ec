"""The device ``bench gpu`` measures: chosen and checked before any work, its name, peak bf16 rate,
synchronisation and peak memory."""
from __future__ import annotations

import os
import resource

import torch

from swinray.errors import ConfigError

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), TFLOP/s; the longest
# matching name wins. Devices without bf16 (V100, T4) are absent: set ``peak_tflops`` for them.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "A30": 165.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "RTX A6000": 155.0, "RTX 6000 Ada": 365.0}


def peak_tflops(name: str, setting: float) -> float | None:
    if setting:
        return setting
    matches = [key for key in PEAK_BF16_TFLOPS if key.lower() in name.lower()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def _no_cuda_reason() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if torch.version.cuda is None:
        return "this PyTorch is a CPU build"
    return "PyTorch finds no usable CUDA device or driver"


def choose_device(requested: str, small_model: bool = False) -> torch.device:
    """``run.device``: cuda, cpu, or auto: cuda when PyTorch sees one, else the CPU only for a small
    model (``--preset debug``). The paper's settings on a CPU would take hours, so auto without a GPU,
    like cuda without one, is a ConfigError that says why."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        try:
            return torch.device("cuda", torch.cuda.current_device())
        except RuntimeError as e:
            raise ConfigError(f"run.device={requested}: CUDA is broken here: {str(e).splitlines()[0]}") from None
    if requested == "auto" and small_model:
        return torch.device("cpu")
    raise ConfigError(f"run.device={requested}: {_no_cuda_reason()}; measure the CPU with run.device=cpu "
                      "(slow at the paper's settings: see gpu_parts) or --preset debug")


def check_device(device: torch.device, use_amp: bool) -> None:
    """A tiny forward and backward on the device, in seconds, before minutes of measurements."""
    try:
        conv = torch.nn.Conv3d(1, 2, 3).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = conv(torch.randn(2, 1, 8, 8, 8, device=device))
        out.float().square().mean().backward()
        sync(device)
    except (RuntimeError, AssertionError) as e:
        raise ConfigError(f"the device check failed on {device}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.getdevice_name(device)
    return f"CPU ({os.uname().machine}, {os.cpu_count()} cores)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1),
                "peak_memory_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2 ** 20, 1),
                "device_memory_mb": round(torch.cuda.get_device_properties(device).total_memory / 2 ** 20, 1),
                "peak_memory_kind": "device: max allocated by PyTorch tensors (reserved by its allocator beside it)"}
    return {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_memory_kind": "process peak RSS so far (CPU)"}
