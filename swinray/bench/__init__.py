"""Benchmarks: ours against the baseline a user would write, on the same machine, in one run."""
from __future__ import annotations

from importlib import import_module

from swinray.config import BenchConfig

TARGETS = {"preprocess": "preprocess:bench_preprocess", "train": "train:bench_train",
           "time-to-dice": "time_to_dice:bench_time_to_dice",
           "label-efficiency": "label_efficiency:bench_label_efficiency", "sweep": "sweep:bench_sweep",
           "inference": "inference:bench_inference", "gpu": "gpu:bench_gpu"}


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """``python -m platform.bench TARGET``: the target's module is imported only when it runs."""
    module, _, function = TARGETS[cfg.target].partition(":")
    return getattr(import_module(f"{__name__}.{module}"), function)(cfg, log)
