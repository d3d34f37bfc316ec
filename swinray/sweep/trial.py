"""One sweep trial: a Tune function that builds and fits a Ray Train ``TorchTrainer`` (Train V2 API).

Validation results flow from the Train workers to Tune through ``TuneReportCallback``. The trial's
Train run is named after the Tune trial, so when Tune restores an interrupted sweep the trial's
trainer picks up its own latest checkpoint instead of starting again.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from swinray.config import FinetuneConfig, apply_overrides, field_types, save_config
from swinray.resolve import CONFIG_FILE, RunPaths, run_dir
from swinray.train.finetune import FinetunePlan
from swinray.train.finetune_loop import train_fn_per_worker
from swinray.train.trainer import loop_config, make_trainer

SETTABLE = set(field_types(FinetuneConfig))


def trial_config(base: FinetuneConfig, params: dict, name: str, storage: str, experiment: str) -> FinetuneConfig:
    """The resolved base config with the sampled overrides, as its own run (still resolved: a trial
    samples hyperparameters, never the data); helper parameters (not config keys) are ignored."""
    overrides = {k: v for k, v in params.items() if k in SETTABLE}
    return apply_overrides(base, {**overrides, "run.name": name, "run.storage": storage,
                                  "run.experiment": experiment})


def run_trial(params: dict, plan: FinetunePlan, trials_dir: str, experiment: str, gpu: bool,
              resources: dict, threads: int) -> None:
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(plan.cfg, params, trial_id, trials_dir, experiment)
    paths: RunPaths = replace(plan.resolved.paths, run_dir=str(run_dir(trials_dir, trial_id)))
    save_config(cfg, Path(paths.run_dir) / CONFIG_FILE)     # what ran; the driver's Aim writer finds the trial by it
    trainer = make_trainer(train_fn_per_worker, loop_config(cfg, paths, threads), cfg.run, gpu, resources,
                           callbacks=[TuneReportCallback()])
    metrics = trainer.fit().metrics or {}
    if metrics.get("diverged_step"):  # an error: Tune marks the trial ERROR, Optuna FAIL
        raise FloatingPointError(f"trial {trial_id} diverged at step {metrics['diverged_step']} "
                                 f"(optim.lr={cfg.optim.lr})")
