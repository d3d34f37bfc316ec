"""Shared fine-tuning search space: every task module calls ``space`` with its own ranges.

A space is define-by-run (Optuna samples inside the function, so conditional parameters such as
"freeze which encoder stages" exist only when SSL weights are used). It returns dotted config
overrides for ``FinetuneConfig`` (``optim.lr``, ...); helper parameters that are not config keys
(``warmup_fraction``, ``start_from_ssl``) stay in Optuna's record of the trial only.
"""
from __future__ import annotations

from dataclasses import dataclass

from swinray.sweep.budget import TrialBudget


@dataclass(frozen=True)
class SpaceContext:
    """What a space needs to know about the sweep: the trial budget and SSL weights on offer."""
    budget: TrialBudget                 # samples per trial: steps follow from the sampled batch size
    pretrained: str = ""                # "" = no SSL weights: every trial trains from scratch


def space(trial, ctx: SpaceContext, *, lr=(1e-4, 3e-3), weight_decay=(1e-6, 1e-2), warmup_fraction=(0.0, 0.2),
          batch_sizes=(1, 2), pos_neg_ratios=(0.5, 1.0, 2.0, 3.0), ce_weight=(0.25, 2.0),
          drop_path_rate=(0.0, 0.3), freeze_stages=(0, 1, 3, 5), freeze_fraction=(0.0, 0.5)) -> dict:
    """Sample one fine-tuning configuration; returns ``{dotted key: value}`` overrides."""
    batch_size = trial.suggest_categorical("optim.batch_size", list(batch_sizes))
    num_steps = ctx.budget.num_steps(batch_size)
    overrides = {
        "optim.lr": trial.suggest_float("optim.lr", *lr, log=True),
        "optim.weight_decay": trial.suggest_float("optim.weight_decay", *weight_decay, log=True),
        "optim.warmup_steps": int(trial.suggest_float("warmup_fraction", *warmup_fraction) * num_steps),
        "optim.batch_size": batch_size,
        "optim.num_steps": num_steps,
        "seg.val_every_steps": ctx.budget.val_every_steps(batch_size),
        "seg.pos_neg_ratio": trial.suggest_categorical("seg.pos_neg_ratio", list(pos_neg_ratios)),
        "seg.dice_weight": 1.0,
        "seg.ce_weight": trial.suggest_float("seg.ce_weight", *ce_weight, log=True),
        "model.drop_path_rate": trial.suggest_float("model.drop_path_rate", *drop_path_rate),
        "seg.pretrained": "", "seg.freeze_encoder_stages": 0, "seg.freeze_encoder_steps": 0,
    }
    if ctx.pretrained and trial.suggest_categorical("start_from_ssl", [True, False]):
        overrides["seg.pretrained"] = ctx.pretrained
        stages = trial.suggest_categorical("seg.freeze_encoder_stages", list(freeze_stages))
        overrides["seg.freeze_encoder_stages"] = stages
        if stages:
            overrides["seg.freeze_encoder_steps"] = int(
                trial.suggest_float("freeze_fraction", *freeze_fraction) * num_steps)
    return overrides
