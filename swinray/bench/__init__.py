"""Benchmarks: ours against the baseline a user would write, on the same machine, in one run."""
from __future__ import annotations

from dataclasses import replace
from importlib import import_module

from swinray.config import BenchConfig, DataConfig, FinetuneConfig
from swinray.presets import preset

TARGETS = {"preprocess": "preprocess:bench_preprocess", "train": "train:bench_train",
           "time-to-dice": "time_to_dice:bench_time_to_dice",
           "label-efficiency": "label_efficiency:bench_label_efficiency", "sweep": "sweep:bench_sweep",
           "inference": "inference:bench_inference", "gpu": "gpu:bench_gpu"}


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """``python -m platform.bench TARGET``: the target's module is imported only when it runs."""
    module, _, function = TARGETS[cfg.target].partition(":")
    return getattr(import_module(f"{__name__}.{module}"), function)(cfg, log)


def finetune_base(cfg: BenchConfig) -> FinetuneConfig:
    """``cfg.finetune_preset`` as a bench runs it: on the bench's data settings, except the voxel size
    and HU window the bench left unchosen (their "the task's" value), which stay the preset's (a CT
    preset's window survives ``--data``); and counted in steps or samples, with the preset's wall-time
    limit off, and the schedule that follows it, so a busy machine changes how long a bench takes,
    never what it measures."""
    base, unchosen = preset(FinetuneConfig, cfg.finetune_preset), DataConfig()
    kept = {key: getattr(base.data, key) for key in ("spacing_mm", "window_hu")
            if getattr(cfg.data, key) == getattr(unchosen, key)}
    return replace(base, data=replace(cfg.data, **kept),
                   seg=replace(base.seg, max_minutes=0.0, schedule_within_max_minutes=False))
