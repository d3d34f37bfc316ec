"""The device benchmark: one prepared command that measures, in a few minutes, what a GPU (or a CPU) does
with the paper's settings, for the minutes a GPU machine may be lent.

    python -m platform.bench gpu                        # the paper's settings on this machine's GPU
    python -m platform.bench gpu --preset debug         # tiny model: every part on a CPU in about a minute
    ray job submit --entrypoint-num-gpus 1 --working-dir . -- python -m platform.bench gpu

It checks the device first (a tiny forward and backward: a broken CUDA fails in seconds, with the
reason), then runs its parts one after another, each capped at ``part_seconds`` and written to
``<out_dir>/gpu.json`` and ``gpu.md`` as soon as it ends, so a later part's failure loses nothing:

- ``pretrain`` and ``pretrain_checkpointing``: the SSL step of ``pretrain_preset`` (the paper's:
  feature size 48, window 7, 96^3 crops, two views, batch 2) under bf16 autocast, gradient
  checkpointing off and on, fed by the real crop pipeline from cached cases: steps/s, samples/s,
  peak device memory, the data-wait fraction, and achieved TFLOP/s (``torch.utils.flop_counter`` on
  one step, recomputation included) with its fraction of the device's peak bf16 rate;
- ``finetune``: Swin UNETR steps/s at the same size, 14 classes (BTCV);
- ``inference``: seconds for one ``gpu_volume_shape`` volume by sliding window (512 x 512 x 128);
- ``data_supply_pretrain`` and ``data_supply_finetune``: samples per CPU-second of one thread of
  the crop pipelines (pretraining's views, made on the device, timed beside), to size the CPU cores
  a GPU needs;
- ``scaling``: on more than one GPU, the pretraining step with two Ray Train workers over NCCL, and
  the ratio of their samples/s to one device's (on a CPU, ``scaling_workers=2`` runs it over gloo).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

from swinray.bench.device import (
    check_device,
    choose_device,
    device_name,
    peak_memory_mb,
    peak_tflops,
    reset_peak,
    sync,
)
from swinray.config import BenchConfig, PretrainConfig, SegConfig
from swinray.data.cache import write_case
from swinray.errors import ConfigError
from swinray.models.registry import build_ssl_head, build_swin_unetr
from swinray.presets import preset
from swinray.pretext.views import make_ssl_batch
from swinray.seg.inference import predict_probabilities
from swinray.seg.model_input import count_windows
from swinray.storage import write_json, write_text
from swinray.train.crops import CropPrefetcher, crop_batch
from swinray.train.replay import VIEWS, step_generator
from swinray.train.seg_data import StepBatches
from swinray.train.state import make_optimizer
from swinray.train.steps import seg_forward_backward, ssl_forward_backward

NUM_CLASSES = 14                        # BTCV's 13 organs and background
WARMUP_STEPS = 2                        # untimed: allocation, cuDNN autotuning, first-call overheads


def _figure(value: float) -> float:
    """Four significant digits: a CPU's TFLOP/s are thousandths."""
    return float(f"{value:.4g}")


def timed(step: Callable[[int], None], device: torch.device, cap_s: float, max_steps: int) -> list[float]:
    """Seconds of each of up to ``max_steps`` steps after the untimed warm-up, stopping once ``cap_s``
    is spent (at least one timed step)."""
    for i in range(WARMUP_STEPS):
        step(i)
    sync(device)
    times: list[float] = []
    while not times or (len(times) < max_steps and sum(times) < cap_s):
        began = time.perf_counter()
        step(WARMUP_STEPS + len(times))
        sync(device)
        times.append(time.perf_counter() - began)
    return times


def flops_of(step: Callable[[int], None]) -> int:
    """Floating-point operations of one step (forward, backward, recomputation), counted by PyTorch."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    return counter.get_total_flops()


def synthetic_cases(folder: Path, roi, count: int, seed: int) -> list[str]:
    """Cached cases as preprocessing writes them (float16 image, uint8 label with a few organs), half
    as large again as the ROI on each side, so crops land anywhere."""
    rng = np.random.default_rng(seed)
    shape = tuple(side + side // 2 for side in roi)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    paths = []
    for i in range(count):
        label = np.zeros(shape, np.uint8)
        for organ in range(1, 5):
            centre = rng.uniform(-0.5, 0.5, 3)[:, None, None, None]
            label[((grid - centre) ** 2).sum(0) < rng.uniform(0.02, 0.06)] = organ
        image = (rng.normal(0, 1, shape) + label).astype(np.float16)[None]
        write_case(folder, f"synthetic{i}", image, label, {})
        paths.append(str(folder / "cases" / f"synthetic{i}.npy"))
    return paths


class Bench:
    """What every part needs: the settings, the device and the synthetic cases."""

    def __init__(self, cfg: BenchConfig, device: torch.device, cases: list[str]):
        self.cfg, self.device, self.cases = cfg, device, cases
        self.pre = preset(PretrainConfig, cfg.pretrain_preset)
        self.roi = tuple(self.pre.model.roi_size)
        self.use_amp = cfg.run.amp_bf16
        self.max_steps = cfg.budget_steps or 20
        self.peak = peak_tflops(device_name(device), cfg.peak_tflops)

    def rates(self, times: list[float], flops: int | None = None, samples_per_step: int = 0) -> dict:
        seconds = sum(times) / len(times)
        out = {"timed_steps": len(times), "seconds_per_step": round(seconds, 4), "steps_per_s": round(1 / seconds, 3)}
        if samples_per_step:
            out["samples_per_s"] = round(samples_per_step / seconds, 3)
        if flops is not None:
            achieved = flops / seconds / 1e12
            out.update(tflop_per_step=_figure(flops / 1e12), achieved_tflops=_figure(achieved),
                       fraction_of_peak=_figure(achieved / self.peak) if self.peak else None)
        return out

    def pretrain(self, checkpointing: bool) -> dict:
        m, device = self.pre.model, self.device
        torch.manual_seed(self.cfg.run.seed)
        model = build_ssl_head(in_channels=1, feature_size=m.feature_size, roi_size=self.roi,
                               use_checkpoint=checkpointing, window_size=m.window_size).to(device)
        optimizer, scheduler = make_optimizer(model, self.pre.optim)
        batch_size = self.pre.optim.batch_size
        crops = CropPrefetcher(self.cases, self.roi, batch_size, self.cfg.run.seed, 0, 0, 10 ** 9,
                               pin_memory=device.type == "cuda")

        def step(i: int) -> None:
            crop = crops.next().to(device, non_blocking=True)
            ssl_forward_backward(model, crop, self.pre.pretext, step_generator(self.cfg.run.seed, 0, i, VIEWS),
                                 self.use_amp)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.pre.optim.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            flops = flops_of(step)
            reset_peak(device)
            wait_before = crops.wait_s
            times = timed(step, device, self.cfg.part_seconds, self.max_steps)
            waited = crops.wait_s - wait_before
        finally:
            crops.close()
        return {"gradient_checkpointing": checkpointing, "batch_size": batch_size, "views": 2,
                **self.rates(times, flops, batch_size), **peak_memory_mb(device),
                "data_wait_fraction": round(min(1.0, waited / sum(times)), 4)}

    def finetune(self) -> dict:
        m, device, batch_size = self.pre.model, self.device, self.pre.optim.batch_size
        torch.manual_seed(self.cfg.run.seed)
        model = build_swin_unetr(in_channels=1, out_channels=NUM_CLASSES, feature_size=m.feature_size,
                                 window_size=m.window_size).to(device)
        optimizer, scheduler = make_optimizer(model, self.pre.optim)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        image = torch.randn((batch_size, 1, *self.roi), device=device)
        label = torch.randint(0, NUM_CLASSES, (batch_size, 1, *self.roi), device=device)

        def step(_: int) -> None:
            seg_forward_backward(model, loss_fn, image, label, self.use_amp)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        flops = flops_of(step)
        reset_peak(device)
        times = timed(step, device, self.cfg.part_seconds, self.max_steps)
        return {"batch_size": batch_size, "classes": NUM_CLASSES, **self.rates(times, flops, batch_size),
                **peak_memory_mb(device)}

    def inference(self) -> dict:
        m, device, seg = self.pre.model, self.device, SegConfig()
        model = build_swin_unetr(in_channels=1, out_channels=NUM_CLASSES, feature_size=m.feature_size,
                                 window_size=m.window_size).to(device).eval()
        shape = tuple(self.cfg.gpu_volume_shape)
        with torch.no_grad():               # warm-up: one batch of windows
            model(torch.zeros((seg.sw_batch_size, 1, *self.roi), device=device))
        reset_peak(device)
        image = torch.randn((1, 1, *shape), device=device)
        sync(device)
        began = time.perf_counter()
        predict_probabilities(model, image, self.roi, seg.sw_batch_size, seg.sw_overlap, self.use_amp)
        sync(device)
        seconds = time.perf_counter() - began
        windows = count_windows(shape, self.roi, seg.sw_overlap)
        return {"volume_shape": list(shape), "windows": windows, "sw_batch_size": seg.sw_batch_size,
                "sw_overlap": seg.sw_overlap, "seconds_per_volume": round(seconds, 3),
                "seconds_per_window": round(seconds / windows, 4), **peak_memory_mb(device)}

    def data_supply(self, draw: Callable[[int], int]) -> dict:
        """Samples per CPU-second of a pipeline on one thread: what one CPU core feeds a device. Timed in
        the thread's own CPU time, so other work on the machine does not lower it."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            draw(0)                         # warm-up: page cache, caching the cases
            samples, i = 0, 1
            began_cpu, began_wall = time.thread_time(), time.perf_counter()
            while samples == 0 or time.perf_counter() - began_wall < self.cfg.part_seconds / 3:
                samples += draw(i)
                i += 1
            cpu_seconds = time.thread_time() - began_cpu
        finally:
            torch.set_num_threads(threads)
        return {"samples": samples, "cpu_seconds": round(cpu_seconds, 2),
                "samples_per_s_per_core": round(samples / cpu_seconds, 3)}

    def data_supply_pretrain(self) -> dict:
        """The CPU side of pretraining: reading crops from the memory-mapped cache (the two views are
        made on the device, from the crop); the views on a CPU are timed beside it, for CPU runs."""
        seed, batch_size = self.cfg.run.seed, self.pre.optim.batch_size

        def crops(i: int) -> int:
            crop_batch(self.cases, self.roi, batch_size, step_generator(seed, 0, i))
            return batch_size

        def crops_and_views(i: int) -> int:
            crop = crop_batch(self.cases, self.roi, batch_size, step_generator(seed, 0, i))
            make_ssl_batch(crop, self.pre.pretext.cutout_max_fraction, step_generator(seed, 0, i, VIEWS))
            return batch_size
        with_views = self.data_supply(crops_and_views)["samples_per_s_per_core"]
        return {"what": f"crops of {self.roi} from the cache (the prefetch thread's work)", **self.data_supply(crops),
                "with_views_on_cpu_samples_per_s_per_core": with_views}

    def data_supply_finetune(self) -> dict:
        batches = StepBatches(self.cases, self.roi, SegConfig(), 1, self.cfg.run.seed, 0)

        def draw(i: int) -> int:
            batches(i)
            return 1
        return {"what": f"positive/negative crops of {self.roi} with flips, rotations and intensity jitter",
                **self.data_supply(draw)}


def needs_per_gpu(parts: dict) -> dict:
    """CPU cores one device needs to be fed: its samples/s over one core's, per training kind."""
    out = {}
    for kind, supply in (("pretrain", "data_supply_pretrain"), ("finetune", "data_supply_finetune")):
        demand = parts.get(kind, {}).get("samples_per_s")
        per_core = parts.get(supply, {}).get("samples_per_s_per_core")
        if demand and per_core:
            out[kind] = round(demand / per_core, 2)
    return out


def markdown(result: dict) -> str:
    lines = [f"# bench gpu: {result['device_name']} ({result['device']})", "",
             f"Preset `{result['preset']}`: {result['model']}; bf16 autocast {result['amp_bf16']}; "
             f"at most {result['part_seconds']:g} s per part.", "",
             "| part | figures |", "|---|---|"]
    for name, figures in result["parts"].items():
        shown = ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {shown} |")
    if result.get("cpu_cores_per_device"):
        lines += ["", "CPU cores one device needs (its samples/s over one core's): "
                  + ", ".join(f"{k} {v}" for k, v in result["cpu_cores_per_device"].items())]
    return "\n".join(lines) + "\n"


PARTS = ("pretrain", "pretrain_checkpointing", "finetune", "inference", "data_supply_pretrain",
         "data_supply_finetune", "scaling")


def bench_gpu(cfg: BenchConfig, log=print) -> dict:
    unknown = set(cfg.gpu_parts) - set(PARTS)
    if unknown:
        raise ConfigError(f"gpu_parts: unknown part(s) {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
    pre = preset(PretrainConfig, cfg.pretrain_preset)
    m = pre.model
    device = choose_device(cfg.run.device, small_model=m.feature_size <= 12)
    check_device(device, cfg.run.amp_bf16)
    devices = torch.cuda.device_count() if device.type == "cuda" else 1
    result = {"command": "bench", "target": "gpu", "device": str(device), "device_name": device_name(device),
              "devices": devices, "torch": torch.__version__, "cuda": torch.version.cuda,
              "preset": cfg.pretrain_preset,
              "model": {"feature_size": m.feature_size, "window_size": m.window_size, "roi_size": list(m.roi_size),
                        "batch_size": pre.optim.batch_size},
              "amp_bf16": cfg.run.amp_bf16, "part_seconds": cfg.part_seconds,
              "peak_bf16_tflops": peak_tflops(device_name(device), cfg.peak_tflops), "parts": {}}
    log(f"bench gpu: device check passed on {result['device_name']} ({device}); preset {cfg.pretrain_preset}: "
        f"feature size {m.feature_size}, window {m.window_size}, ROI {tuple(m.roi_size)}, batch {pre.optim.batch_size}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=out_dir))
    workers = cfg.scaling_workers or (2 if devices > 1 else 0)
    try:
        bench = Bench(cfg, device, synthetic_cases(work, tuple(m.roi_size), 4, cfg.run.seed))
        run_part: dict[str, Callable[[], dict]] = {
            "pretrain": lambda: bench.pretrain(checkpointing=False),
            "pretrain_checkpointing": lambda: bench.pretrain(checkpointing=True),
            "finetune": bench.finetune, "inference": bench.inference,
            "data_supply_pretrain": bench.data_supply_pretrain, "data_supply_finetune": bench.data_supply_finetune,
            "scaling": lambda: scaling(cfg, pre, device, workers, result["parts"].get("pretrain"))}
        for name in cfg.gpu_parts or PARTS:
            if name == "scaling" and workers < 2:
                result["parts"][name] = {"skipped": f"one device ({devices}); scaling_workers=2 runs it"}
                continue
            log(f"bench gpu: {name} ...")
            began = time.perf_counter()
            try:
                result["parts"][name] = run_part[name]()
            except Exception as e:          # one part's failure loses neither the others nor what was measured
                result["parts"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"bench gpu: {name} ({time.perf_counter() - began:.0f} s): {result['parts'][name]}")
            result["cpu_cores_per_device"] = needs_per_gpu(result["parts"])
            write_json(out_dir / "gpu.json", result)
            write_text(out_dir / "gpu.md", markdown(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ok"] = not any("error" in p for p in result["parts"].values())
    result.update(json=str(out_dir / "gpu.json"), markdown=str(out_dir / "gpu.md"))
    write_json(out_dir / "gpu.json", result)
    return result


def scaling(cfg: BenchConfig, pre: PretrainConfig, device: torch.device, workers: int, one_device: dict | None) -> dict:
    from swinray.bench.gpu_scaling import scaling as run_scaling  # imports Ray Train only when it runs
    return run_scaling(cfg, pre, device, workers, one_device)
