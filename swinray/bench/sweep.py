"""Sweep efficiency: TPE + ASHA against random search without early stopping, same task, budget and seed.

Both sweeps sample ``sweep_trials`` trials of the same fine-tuning preset. Every trial has the
same budget of training samples, ``budget_steps`` (default: the preset's steps) times the preset's
batch size, whatever batch size it samples, and validates at the same sample intervals (the
sweep's defaults: 9 validations, ASHA's rungs at 1/9 and 1/3 with reduction factor 3). The
figures are the best validation Dice each finds and the training samples all its trials spent
together (trial-epochs up to the constant training-set size). Target: within 1% of random
search's best Dice for at most half its samples. Sweeps are named ``bench-tpe-asha`` and
``bench-random-none`` under ``<out_dir>/sweeps`` and restore when rerun.

    python -m platform.bench sweep --data ../shared/data/Task04_Hippocampus --set sweep_trials=8
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from swinray.config import BenchConfig, FinetuneConfig, SweepConfig
from swinray.presets import preset
from swinray.storage import write_json
from swinray.sweep.run import run_sweep


def arm_config(cfg: BenchConfig, search: str, scheduler: str) -> SweepConfig:
    base = preset(FinetuneConfig, cfg.finetune_preset)
    base = replace(base, data=cfg.data, run=replace(base.run, ray_address=cfg.run.ray_address))
    samples = (cfg.budget_steps or base.optim.num_steps) * base.optim.batch_size
    return SweepConfig(finetune=base, trials=cfg.sweep_trials, trial_samples=samples, search=search,
                       scheduler=scheduler,
                       seed=cfg.run.seed, name=f"bench-{search}-{scheduler}", storage=str(Path(cfg.out_dir) / "sweeps"))


def bench_sweep(cfg: BenchConfig, log=print) -> dict:
    arms = {}
    for search, scheduler in (("tpe", "asha"), ("random", "none")):
        log(f"bench sweep: {search} + {scheduler}, {cfg.sweep_trials} trials of {cfg.finetune_preset}")
        (summary,) = run_sweep(arm_config(cfg, search, scheduler), log)["sweeps"]
        arms[f"{search}+{scheduler}"] = {"best_val_dice": summary["best_val_dice"],
                                         "trial_steps": summary["trial_steps"],
                                         "trial_samples": summary["trial_samples"],
                                         "early_stopped": summary["early_stopped"], "errored": summary["errored"],
                                         "table": summary["table"]}
    ours, baseline = arms["tpe+asha"], arms["random+none"]
    dice_ratio = (ours["best_val_dice"] / baseline["best_val_dice"]
                  if ours["best_val_dice"] and baseline["best_val_dice"] else None)
    steps_ratio = ours["trial_steps"] / baseline["trial_steps"] if baseline["trial_steps"] else None
    samples_ratio = ours["trial_samples"] / baseline["trial_samples"] if baseline["trial_samples"] else None
    met = dice_ratio is not None and samples_ratio is not None and dice_ratio >= 0.99 and samples_ratio <= 0.5
    log(f"bench sweep: TPE+ASHA best Dice {ours['best_val_dice']} in {ours['trial_samples']} trial samples "
        f"({ours['trial_steps']} steps); random best Dice {baseline['best_val_dice']} in {baseline['trial_samples']} "
        f"({baseline['trial_steps']} steps); Dice ratio {dice_ratio}, samples ratio {samples_ratio} "
        f"(target: Dice >= 0.99x for samples <= 0.5x: {'met' if met else 'not met'})")
    result = {"command": "bench", "target": "sweep", "preset": cfg.finetune_preset, "trials": cfg.sweep_trials,
              "arms": arms, "dice_ratio": dice_ratio, "samples_ratio": samples_ratio, "steps_ratio": steps_ratio,
              "target_met": met}
    write_json(Path(cfg.out_dir) / "sweep.json", result)
    return result
