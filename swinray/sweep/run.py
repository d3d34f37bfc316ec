"""The sweep driver: plan once per task, run the Tune experiment (or restore it), write the outputs.

    python -m platform.sweep --preset debug
    python -m platform.sweep --preset cpu-hippocampus --data data/msd/Task04_Hippocampus --trials 12
    python -m platform.sweep --tasks all --data /data/msd      # one sweep per task folder found

Per task, under ``<storage>/<name>`` (``<name>-<task>`` with several tasks): ``tune/`` (Tune's
experiment, restorable), ``trials/<trial_id>/`` (each trial's Ray Train run, its ``config.json``
and what rank 0 recorded, copied into Aim by this driver while the sweep runs),
``trials.md`` and ``trials.json`` (every trial; Optuna's own record of the study), ``best_config.json``
(``platform.finetune --config`` takes it) and ``best_model.pt``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import ray.tune
from ray.tune import Tuner

from swinray import interrupt
from swinray.aim_mirror import mirror_to_aim
from swinray.config import FinetuneConfig, SweepConfig, save_config
from swinray.data.tasks import TASKS
from swinray.errors import ConfigError, StorageError, UserError
from swinray.resolve import Resolved, resolve_sweep, resolve_sweep_task, save, sweep_dir
from swinray.runtime import init_ray, use_gpu
from swinray.search_spaces import space_for
from swinray.search_spaces.common import SpaceContext
from swinray.storage import (
    checkpoint_location,
    copy_to_local,
    exists,
    fetch,
    ray_storage_path,
    shown,
    write_json,
    write_text,
)
from swinray.sweep.budget import trial_budget
from swinray.sweep.cleanup import FreeTrialWorkers
from swinray.sweep.progress import ENDED, SweepProgress
from swinray.sweep.report import summarise
from swinray.sweep.searcher import export_study, make_scheduler, make_searcher
from swinray.sweep.trial import run_trial, trial_config
from swinray.tracking import aim_explorer_url, aim_ui_command
from swinray.train.finetune import plan_finetune, test_score
from swinray.train.trainer import worker_resources

TRIAL_ACTOR_CPU = 0.01  # the Tune function only waits on its trainer; Train workers hold the real CPUs
TUNE_DIR = "tune"


@dataclass(frozen=True)
class TaskSpace:
    """Picklable define-by-run space: Tune saves the searcher, space included, with the sweep."""
    task: str
    ctx: SpaceContext

    def __call__(self, trial) -> dict:
        return space_for(self.task)(trial, self.ctx)


def sweep_targets(cfg: SweepConfig) -> list[FinetuneConfig]:
    """One fine-tuning base config per task to sweep."""
    if not cfg.tasks:
        return [cfg.finetune]
    root = Path(cfg.finetune.data.source)
    names = list(TASKS) if cfg.tasks == ("all",) else list(cfg.tasks)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not root.is_dir():
        raise ConfigError(f"tasks={list(cfg.tasks)} with data {root}: need a folder holding task folders named "
                          f"after registry tasks ({', '.join(TASKS)})" + (f"; unknown: {unknown}" if unknown else ""))
    found = [n for n in names if (root / n).is_dir()]
    if not found:
        raise ConfigError(f"{root}: none of the task folders {', '.join(names)} is there")
    return [replace(cfg.finetune, data=replace(cfg.finetune.data, source=str(root / n), task=n)) for n in found]


def concurrency(cfg: SweepConfig, cluster: dict, gpu: bool) -> int:
    """Trials at once: 1 GPU or 2 CPUs per Train worker, at least one trial, at most the trials."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    workers = cfg.finetune.run.num_workers
    fits = cluster["gpus"] // workers if gpu else cluster["cpus"] // (2 * workers)
    return int(max(1, min(cfg.trials, fits)))


def sweep_task(cfg: SweepConfig, resolved: Resolved, sweep_name: str, log=print) -> dict:
    """One task's sweep; ``resolved``: its fine-tuning base, resolved, with its split in the sweep folder."""
    plan = plan_finetune(resolved, log)
    base, task = plan.cfg, plan.cfg.data.task
    folder = sweep_dir(cfg, sweep_name)
    trials_dir = folder / "trials"
    cluster = init_ray(base.run)
    gpu = use_gpu(base.run)
    concurrent = concurrency(cfg, cluster, gpu)
    resources, threads = worker_resources(cluster["cpus"] / concurrent, base.run.num_workers, gpu)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, plan=plan, trials_dir=str(trials_dir), experiment=sweep_name,
                                 gpu=gpu, resources=resources, threads=threads),
        {"CPU": TRIAL_ACTOR_CPU})
    # Checkpoint-only reports carry no val_dice: ASHA and our searcher skip them (Tune would abort)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    experiment = folder / TUNE_DIR
    workers = base.run.num_workers
    budget = trial_budget(cfg.trial_samples or base.optim.num_steps * base.optim.batch_size * workers,
                          cfg.reduction_factor, cfg.rungs, workers)
    if Tuner.can_restore(ray_storage_path(experiment)):
        log(f"sweep {sweep_name}: restoring {shown(experiment)} (finished trials are kept, unfinished ones resume)")
        tuner = Tuner.restore(ray_storage_path(experiment), trainable, resume_unfinished=True, resume_errored=False)
    else:
        log(f"sweep {sweep_name} on {task}: {cfg.trials} trial(s) of {budget.samples} training samples, "
            f"{budget.validations} validations each, {cfg.search} + {cfg.scheduler}, {concurrent} at a time, "
            f"{workers} worker(s) each ({resources}) -> {shown(folder)}")
        space = TaskSpace(task, SpaceContext(budget, pretrained=base.seg.pretrained))
        points = json.loads(Path(cfg.start_points).read_text()) if cfg.start_points else None
        tuner = Tuner(trainable, tune_config=ray.tune.TuneConfig(
            search_alg=make_searcher(space, cfg.search, cfg.seed, cfg.trials, points),
            scheduler=make_scheduler(cfg.scheduler, budget, cfg.reduction_factor),
            num_samples=cfg.trials, max_concurrent_trials=concurrent),
            run_config=ray.tune.RunConfig(name=TUNE_DIR, storage_path=ray_storage_path(folder),
                                          failure_config=ray.tune.FailureConfig(max_failures=0), verbose=0,
                                          callbacks=[FreeTrialWorkers(str(trials_dir)),
                                                     SweepProgress(sweep_name, cfg.trials)]))
    with mirror_to_aim(base.run.aim_repo, folders=[trials_dir], log=log) as aim, \
            interrupt.ours_after():     # Tune stops on Ctrl-C, saves the experiment and returns
        grid = tuner.fit()
    stopped = interrupt.received()

    searcher = make_searcher(None, cfg.search, cfg.seed)
    fetch(experiment, refresh=True)     # Tune's state in object storage: the searcher reads local files
    searcher.restore_from_dir(str(experiment))
    study = export_study(searcher.study)
    cut = unfinished_trials(experiment) if stopped else set()
    summary = summarise(grid, base.optim.num_steps, base.optim.batch_size, base.run.num_workers, cut)
    write_json(folder / "trials.json", {"task": task, "trials": summary["rows"], "optuna_study": study})
    write_text(folder / "trials.md", summary["markdown"])
    out = {"task": task, "sweep_dir": shown(folder), "trials": len(summary["rows"]),
           "early_stopped": summary["early_stopped"], "errored": summary["errored"],
           "interrupted_trials": summary["interrupted"],
           "trial_steps": summary["trial_steps"], "trial_samples": summary["trial_samples"],
           "best_val_dice": None, "aim_experiment": sweep_name, "aim_error": aim.aim_error,
           "table": shown(folder / "trials.md"),
           "aim_link": aim_explorer_url(f'metric.name == "val_dice" and run.experiment == "{sweep_name}"'),
           "report_command": f"python -m platform.report --aim-repo {base.run.aim_repo} --experiment {sweep_name}"}
    if stopped:                         # the best model and its test score wait for the finished sweep
        log(f"sweep {sweep_name}: interrupted; so far:\n{summary['markdown']}")
        raise interrupt.Interrupted(out)
    best = summary["best"]
    if best:
        name = f"{sweep_name}-best"
        best_cfg = trial_config(base, best["params"], name, base.run.storage, name)
        out.update(best_val_dice=best["best_val_dice"], best_trial=best["trial_id"],
                   best_config=shown(save_config(best_cfg, folder / "best_config.json")))
        model = checkpoint_location(best["model"], ray_storage_path(trials_dir)) if best.get("model") else ""
        if model and exists(model):
            out["best_model"] = shown(copy_to_local(model, folder / "best_model.pt"))
            test = test_score(plan, folder / "best_model.pt", folder / "test_per_case.csv", log)  # after the choice
            out.update(best_test_dice=test["test_dice"], num_test_cases=test["num_test_cases"],
                       test_time_flips=test["test_time_flips"])
        log(f"sweep {sweep_name}: best trial {best['trial_id']} Dice {best['best_val_dice']:.4f}; "
            f"fine-tune with it: python -m platform.finetune --config {out['best_config']}")
    log(f"sweep {sweep_name}:\n{summary['markdown']}")
    log(f"sweep {sweep_name}: compare the trials in Aim (after `{aim_ui_command(base.run.aim_repo)}`): "
        f"{out['aim_link']}\n  or write a report: {out['report_command']}")
    return out


def sweep(resolved: Resolved, log=print) -> dict:
    cfg: SweepConfig = resolved.cfg
    repo, sweeps = cfg.finetune.run.aim_repo, []
    summary = {"command": "sweep", "sweeps": sweeps, "aim_repo": repo, "aim_command": aim_ui_command(repo)}
    try:
        if not cfg.tasks:
            sweeps.append(sweep_task(cfg, resolved_base(resolved), cfg.name, log))
        else:
            targets = sweep_targets(resolved.requested)
            for target in targets:
                name = f"{cfg.name}-{target.data.task}"
                try:
                    task = resolve_sweep_task(resolved.requested, target, name, log)
                    save(task)
                    sweeps.append(sweep_task(task.cfg, resolved_base(task), name, log))
                except (UserError, ValueError, RuntimeError) as e:
                    if len(targets) == 1 or interrupt.received() or isinstance(e, StorageError):
                        raise                   # a fault of the place stops every task alike
                    log(f"sweep {name}: failed: {e}")     # one task's failure never stops the others
                    sweeps.append({"task": target.data.task, "error": str(e)})
    except interrupt.Interrupted as e:                      # no later task starts
        sweeps.append(e.reached)
        raise interrupt.Interrupted({**summary, "aim_error": first_aim_error(sweeps)}) from None
    return {**summary, "aim_error": first_aim_error(sweeps), "ok": all("error" not in s for s in sweeps)}


def first_aim_error(sweeps: list[dict]) -> str | None:
    return next((s["aim_error"] for s in sweeps if s.get("aim_error")), None)


def unfinished_trials(experiment: Path) -> set[str]:
    """The folder names of the trials Tune saved as neither finished nor failed: those an interrupt
    cut, which the same command resumes. (The grid ``Tuner.fit()`` returns calls them TERMINATED,
    as it does the trials ASHA stopped.)"""
    trials = ray.tune.ExperimentAnalysis(str(experiment)).trials
    return {Path(t.path).name for t in trials if t.status not in ENDED}


def resolved_base(resolved: Resolved) -> Resolved:
    """A one-task sweep's resolved fine-tuning base: its section of the resolved sweep config."""
    cfg: SweepConfig = resolved.cfg
    return Resolved(cfg.finetune, resolved.requested.finetune, resolved.paths, resolved.dataset)


def run_sweep(cfg: SweepConfig, log=print) -> dict:
    """Resolve, save and run: what ``python -m platform.sweep`` does."""
    resolved = resolve_sweep(cfg, log)
    save(resolved)
    return sweep(resolved, log)
