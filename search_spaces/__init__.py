"""Fine-tuning search spaces, one module per task; shared defaults in ``common``.

    from swinray.search_spaces import space_for
    space = space_for("Task04_Hippocampus")   # space(trial, ctx) -> {"optim.lr": ..., ...}
"""
from __future__ import annotations

from importlib import import_module
from typing import Callable

MODULES = {
    "BTCV": "btcv",
    "Task01_BrainTumour": "task01_brain_tumour",
    "Task02_Heart": "task02_heart",
    "Task03_Liver": "task03_liver",
    "Task04_Hippocampus": "task04_hippocampus",
    "Task05_Prostate": "task05_prostate",
    "Task06_Lung": "task06_lung",
    "Task07_Pancreas": "task07_pancreas",
    "Task08_HepaticVessel": "task08_hepatic_vessel",
    "Task09_Spleen": "task09_spleen",
    "Task10_Colon": "task10_colon",
}


def space_for(task: str) -> Callable:
    """The task's define-by-run space; a task without its own module gets the shared defaults."""
    if task in MODULES:
        return import_module(f"{__name__}.{MODULES[task]}").space
    from .common import space
    return space
