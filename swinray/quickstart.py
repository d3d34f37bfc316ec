"""The whole platform on the built-in phantom, one verb after another, as a user would run them.

Phantom generation, Ray Data preprocessing into the cache, SSL pretraining with two Ray Train
workers, fine-tuning from those weights, evaluation of the fine-tuned model, and a tiny Tune +
Optuna + ASHA sweep whose trials may start from the same weights (the debug model: minutes on a
laptop CPU). Every run lands in one Aim repository.
``python -m platform.doctor`` checks a cluster on its own.

    python -m platform.quickstart --preset debug
"""
from __future__ import annotations

from typing import Callable

from swinray.config import QuickstartConfig
from swinray.tracking import aim_ui_command


def quickstart_steps(preset: str) -> list[tuple[str, Callable[[dict], list[str]]]]:
    """(verb, results so far -> argv) in order; every verb runs with the same preset."""
    return [
        ("phantom", lambda _: ["--preset", preset]),
        ("preprocess", lambda _: ["--preset", preset]),
        ("pretrain", lambda _: ["--preset", preset]),
        ("finetune", lambda done: ["--preset", preset, "--pretrained", done["pretrain"]["encoder"]]),
        ("evaluate", lambda done: ["--preset", preset, "--checkpoint", done["finetune"]["model"],
                                   "--data", done["phantom"]["out_dir"]]),
        ("sweep", lambda done: ["--preset", preset, "--pretrained", done["pretrain"]["encoder"]]),
    ]


def run_quickstart(cfg: QuickstartConfig, log=print) -> dict:
    from swinray.cli import run_verb
    results = {}
    for i, (verb, make_argv) in enumerate(quickstart_steps(cfg.preset), start=1):
        argv = make_argv(results)
        log(f"step {i}: python -m platform.{verb} {' '.join(argv)}")
        results[verb] = summary = run_verb(verb, argv)
        if not summary.get("ok", True):
            log(f"step {i} ({verb}) failed: {summary}")
            return {"command": "quickstart", "ok": False, "failed_step": verb, "steps": results}
    log("done. Outputs: phantom dataset in " + results["phantom"]["out_dir"]
        + ", preprocessed cache in " + results["preprocess"]["cache_dir"]
        + ", pretrained encoder in " + results["pretrain"]["encoder"]
        + ", fine-tuned model in " + results["finetune"]["model"]
        + f" (validation Dice {results['finetune']['best_val_dice']:.3f}"
        + ("; near 0 is expected: the debug preset trains a tiny model for a few steps" if cfg.preset == "debug"
           else "") + "), per-case scores in "
        + results["evaluate"]["per_case_csv"]
        + ", sweep trials in " + results["sweep"]["sweeps"][0]["table"]
        + f"; compare every run with: {aim_ui_command(results['pretrain']['aim_repo'])}")
    return {"command": "quickstart", "ok": True, "steps": results}
