"""One way to build a ``TorchTrainer``: explicit fractional resources, checkpoints kept, restarts;
one way to run it (``fit``: a fault of run storage is named, not a traceback); and what every Train
worker does first (``start_worker``, ``case_files``) and can check at the end (``ranks_agree``).

Pretraining, fine-tuning and every sweep trial build their trainer here, so resources, storage
and failure handling cannot drift apart. Rebuilding it with the same ``run.name`` and
``run.storage`` resumes (Ray Train V2).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from swinray.config import RunConfig, from_dict, to_dict
from swinray.data.cache import case_paths
from swinray.errors import StorageError
from swinray.resolve import RUN_STORAGE_KEY, RunPaths
from swinray.storage import fetch, is_uri, ray_storage_path, shown
from swinray.writable import storage_fault

DATA_CPU_RESERVE = 0.5  # CPU left free beside the workers: Ray Data tasks, a sweep trial's function actor


def worker_resources(cpus: float, num_workers: int, gpu: bool) -> tuple[dict, int]:
    """Per-worker Ray resources and torch threads: explicit and fractional, so it always fits."""
    per_worker = max(0.1, min(1.0 if gpu else float("inf"), (cpus - DATA_CPU_RESERVE) / num_workers))
    return {"CPU": round(per_worker, 3)}, max(1, int(cpus // num_workers))


def quiet_train_reports() -> None:
    """Ray Train V2 logs every ``ray.train.report`` call with all its metrics at INFO, on every rank;
    the driver's progress bar already shows them. Its logger is named after its file."""
    try:
        from ray.train.v2._internal.execution import context
        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:                 # another Ray version: its lines stay
        pass


def loop_config(cfg, paths: RunPaths, threads_per_worker: int) -> dict:
    """``train_loop_config``: the resolved config and one small environment part, as plain dicts."""
    return {"cfg": to_dict(cfg), "env": {**dataclasses.asdict(paths), "threads_per_worker": threads_per_worker}}


class Worker(NamedTuple):
    cfg: Any                            # the resolved config, rebuilt and checked by ``from_dict``
    paths: RunPaths
    rank: int
    world: int
    device: torch.device


def start_worker(config: dict, cls: type) -> Worker:
    """A Train worker's first lines: its config back as a ``cls`` dataclass, its CPU threads and the
    run's seed (identical initial weights on every rank)."""
    cfg = from_dict(cls, config["cfg"])
    env = dict(config["env"])
    quiet_train_reports()
    ctx = ray.train.get_context()
    torch.set_num_threads(env.pop("threads_per_worker"))
    torch.manual_seed(cfg.run.seed)
    return Worker(cfg, RunPaths(**env), ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def case_files(paths: RunPaths, part: str) -> list[str]:
    """The cached case files of one part of the run's ``split.json`` ("training", "validation"), in
    its listed order: every rank reads the same list and takes its own share, on every (re)start."""
    fetch(paths.split, refresh=True)        # in object storage: never a stale copy of an earlier run's
    case_ids = json.loads(Path(paths.split).read_text())[part]
    return [str(case_paths(Path(paths.cache), case_id)[0]) for case_id in case_ids]


def cached_task(paths: RunPaths) -> dict:
    """The task the cache was made for (``task.json``): label names and pairs, intensity settings."""
    task_file = Path(paths.cache) / "task.json"
    fetch(task_file, refresh=True)
    return json.loads(task_file.read_text())


def ranks_agree(module: torch.nn.Module) -> bool:
    """Whether every rank holds the same weights, as DDP promises: position-weighted checksums of
    all parameters, compared by an all-reduced max and min (exact: DDP keeps replicas bitwise equal)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True                     # one process: nothing to compare
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) / flat.numel()
        sums = torch.stack([flat.sum(), (flat * flat).sum(), (flat * position).sum()])
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))


def make_trainer(train_fn: Callable[[dict], None], loop_config: dict, run: RunConfig, gpu: bool,
                 resources: dict, callbacks: list | None = None,
                 name: str | None = None, storage: str | Path | None = None) -> TorchTrainer:
    """A ``TorchTrainer`` for ``run``; ``name``/``storage`` default to ``run.name``/``run.storage``."""
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=run.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name or run.name, storage_path=ray_storage_path(storage or run.storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.num_checkpoints_kept),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            callbacks=callbacks or None),
    )


def fit(trainer: TorchTrainer, run_dir: str | Path) -> ray.train.Result:
    """``trainer.fit()``; training that failed because ``run_dir`` could not be written (a worker's
    metrics log or checkpoint on a refused or full disk) ends as the StorageError naming it. The
    checkpoints persisted before stay: a rerun once it is fixed resumes from the last."""
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        fault = training_fault(e, run_dir)
        if fault is None:
            raise
        raise fault from None


def finished_result(run: RunConfig, why_over: Callable[[dict], str]) -> tuple[ray.train.Result, str] | None:
    """A run whose latest checkpoint says it is over, and why (``why_over`` of its metrics, "" while it
    has more to do), read from its local storage without starting Ray or Train: a rerun of a finished
    run takes seconds, not Train's start-up. None otherwise (no checkpoint, more to do, object storage,
    unreadable): Train resumes it."""
    storage = ray_storage_path(run.storage)
    if is_uri(storage) or not (Path(storage) / run.name).is_dir():
        return None
    train_logger = logging.getLogger("ray.train")
    level = train_logger.level
    train_logger.setLevel(logging.WARNING)     # "A run snapshot was found in storage folder ..."
    try:
        result = ray.train.Result.from_path(Path(storage) / run.name)
    except Exception:       # a shortcut only: a snapshot half written, from another Ray version, or
        return None         # naming a checkpoint folder that is gone goes through Train
    finally:
        train_logger.setLevel(level)
    why = why_over(result.metrics or {}) if result.checkpoint is not None else ""
    return (result, why) if why else None


def settle_finished(run_dir: Path, step: int, aim_repo: str, log) -> str | None:
    """For a run over at its checkpoint of ``step``: lines logged past it (before an interruption)
    dropped, as a resume drops them, and what Aim lacks (after an Aim failure mid-run, say) copied
    into Aim, as ``fit_followed`` does at the end of training. Returns the Aim error, if any."""
    from swinray.aim_mirror import mirror_to_aim
    from swinray.tracking import Tracker
    Tracker(run_dir, resumed_at=step).close()
    with mirror_to_aim(aim_repo, runs=[run_dir], log=log) as aim:
        pass
    return aim.aim_error


def fit_unless_finished(run: RunConfig, run_dir: Path, total_steps: int, desc: str, finished_by: Callable[[dict], str],
                        start: Callable[[], TorchTrainer], log,
                        time_limit: tuple[float, str] = (math.inf, "")) -> tuple[ray.train.Result, str | None]:
    """``fit_followed`` on the trainer that ``start()`` builds (starting Ray), unless the run is over:
    ``finished_by(metrics)`` of its latest checkpoint says why, or "" while it has more to do.
    ``time_limit`` is a clock that may stop training first (see ``follow_run``).
    Returns the result and the Aim error, if any."""
    finished = finished_result(run, finished_by)
    if finished is not None:
        result, why = finished
        step = result.metrics["step"]
        log(f"{run.name} already finished at step {step} ({why}) in {shown(run_dir)}: nothing to train")
        return result, settle_finished(run_dir, step, run.aim_repo, log)
    result, aim = fit_followed(start(), run_dir, total_steps, desc, run.aim_repo, log, time_limit)
    return result, aim.aim_error


def fit_followed(trainer: TorchTrainer, run_dir: Path, total_steps: int, desc: str, aim_repo: str, log,
                 time_limit: tuple[float, str] = (math.inf, "")):
    """``fit`` as the drivers run it: a progress bar from rank 0's metrics log, the Aim writer copying
    the run as it trains, and a stop signal ending it as ``Interrupted`` with the steps reached.
    Returns (the result, the Aim mirror, whose ``aim_error`` the summary reports)."""
    from swinray import interrupt  # the driver's alone: workers never import these
    from swinray.aim_mirror import mirror_to_aim
    from swinray.progress import follow_run
    with interrupt.interruptible(lambda: {"run_dir": shown(run_dir), "steps": progress.done,
                                          "aim_error": aim.aim_error}), \
            follow_run(run_dir / "metrics.jsonl", total_steps, desc, time_limit=time_limit) as progress, \
            mirror_to_aim(aim_repo, runs=[run_dir], log=log) as aim:
        with interrupt.ours_after():    # Train's SIGINT handler outlives fit: ours are back for Aim's last copy
            result = fit(trainer, run_dir)
    return result, aim


def training_fault(error: BaseException, run_dir: str | Path) -> StorageError | None:
    """The fault of ``run_dir`` behind a failed training, if any: in a worker's error (Ray Train's
    ``WorkerGroupError``), the controller's (``ControllerError``), or what caused either."""
    failures = [*getattr(error, "worker_failures", {}).values(), getattr(error, "controller_failure", None), error]
    for failure in failures:
        seen = set()
        while failure is not None and id(failure) not in seen:
            seen.add(id(failure))
            fault = storage_fault(failure, run_dir, RUN_STORAGE_KEY)
            if fault is not None:
                return fault
            failure = failure.__cause__ or failure.__context__
    return None
