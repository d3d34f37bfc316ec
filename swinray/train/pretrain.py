"""The pretraining driver: preprocess if needed, build the TorchTrainer, fit, export the encoder.

    python -m platform.pretrain --preset debug
    ray job submit --working-dir . -- python -m platform.pretrain --data /shared/ct --name ssl-1
"""
from __future__ import annotations

import json
from pathlib import Path

from ray.train.torch import TorchTrainer

from swinray.config import PretrainConfig
from swinray.data.preprocess import preprocess_dataset
from swinray.errors import DatasetError
from swinray.models.registry import build_swin_unetr
from swinray.models.weights import load_encoder
from swinray.resolve import RUN_STORAGE_KEY, Resolved, resolve_pretrain, save
from swinray.runtime import init_ray, use_gpu
from swinray.storage import (
    checkpoint_location,
    copy_to_local,
    fetch,
    local_path,
    ray_storage_path,
    shown,
    write_json,
)
from swinray.train.pretrain_loop import train_fn_per_worker
from swinray.train.proxy_progress import describe, proxy_progress
from swinray.train.state import ENCODER_FILE
from swinray.train.trainer import fit_unless_finished, loop_config, make_trainer, worker_resources
from swinray.writable import writing_to


def training_cases(split_file: Path, cached: list[str], log=print) -> list[str]:
    """The run's cases: those it started with when it is resumed (a resume replays only on the same
    cases, so cases added to the cache since wait for a new run), else every cached case."""
    if not fetch(split_file, refresh=True):
        return cached
    started = json.loads(split_file.read_text())["training"]
    if started == cached:
        return cached
    available = set(cached)
    if all(case_id in available for case_id in started):
        log(f"{shown(split_file)}: resuming on the {len(started)} case(s) the run started with "
            f"({len(available.difference(started))} cached since are left for a new run)")
        return started
    log(f"warning: {shown(split_file)}: case(s) the run started with are no longer cached; it goes on with "
        f"the {len(cached)} cached now, so the steps it redoes differ from the first time")
    return cached


def pretrain(resolved: Resolved, log=print) -> dict:
    cfg: PretrainConfig = resolved.cfg
    cache = preprocess_dataset(resolved.dataset, Path(resolved.paths.cache), cfg.data.max_cases, cfg.run, log)
    cases = json.loads(local_path(cache["manifest"]).read_text())["cases"]
    if len(cases) < cfg.run.num_workers:
        raise DatasetError(f"{cache['manifest']}: {len(cases)} cached case(s) for run.num_workers="
                           f"{cfg.run.num_workers}; every worker needs at least one (add cases or lower --workers)")
    run_dir = Path(resolved.paths.run_dir)

    def start() -> TorchTrainer:
        cluster = init_ray(cfg.run)
        gpu = use_gpu(cfg.run)
        resources, threads = worker_resources(cluster["cpus"], cfg.run.num_workers, gpu)
        log(f"pretraining {cfg.run.name}: {cfg.run.num_workers} worker(s) on {'GPU' if gpu else 'CPU'} "
            f"({resources}), {len(cases)} case(s), {cfg.optim.num_steps} steps -> {shown(run_dir)}")
        case_ids = training_cases(Path(resolved.paths.split), [c["case_id"] for c in cases], log)
        with writing_to(run_dir, RUN_STORAGE_KEY):
            write_json(resolved.paths.split, {"training": case_ids})      # rank r trains on every world-th from r
        return make_trainer(train_fn_per_worker, loop_config(cfg, resolved.paths, threads), cfg.run, gpu, resources)

    def finished_by(metrics: dict) -> str:
        return "num_steps" if metrics.get("step", 0) >= cfg.optim.num_steps else ""
    result, aim_error = fit_unless_finished(cfg.run, run_dir, cfg.optim.num_steps, f"pretrain {cfg.run.name}",
                                            finished_by, start, log)
    encoder_path = run_dir / ENCODER_FILE
    with result.checkpoint.as_directory() as directory, writing_to(run_dir, RUN_STORAGE_KEY):
        copy_to_local(str(Path(directory) / ENCODER_FILE), encoder_path)
    check = build_swin_unetr(in_channels=cfg.model.in_channels, out_channels=2,
                             feature_size=cfg.model.feature_size, window_size=cfg.model.window_size)
    report = load_encoder(check, encoder_path)
    log(f"encoder exported to {shown(encoder_path)}; into a fresh SwinUNETR: {report.summary()}")
    metrics = result.metrics or {}
    in_sync = metrics.get("weights_in_sync", True)       # the last step's checkpoint has it
    if not in_sync:
        log("error: the ranks' weights differ at the end of training; DDP did not keep them in sync")
    metrics_log = run_dir / "metrics.jsonl"
    try:                                # in object storage: rank 0's log, not this node's copy from the start
        fetch(metrics_log, refresh=True)
    except OSError:                     # unreadable now: the proxies come from the copy here, if any
        pass
    proxies = proxy_progress(metrics_log) if metrics_log.is_file() else {}
    log(describe(proxies))
    return {"command": "pretrain", "run_dir": shown(run_dir), "steps": metrics.get("step"),
            "loss": metrics.get("loss"), "proxies": proxies, "encoder": shown(encoder_path),
            "encoder_keys_loaded": len(report.loaded), "encoder_keys_missing": len(report.missing),
            "checkpoint": checkpoint_location(result.checkpoint.path, ray_storage_path(cfg.run.storage)),
            "metrics_log": shown(run_dir / "metrics.jsonl"), "aim_repo": cfg.run.aim_repo,
            "aim_error": aim_error, "weights_in_sync": in_sync,
            "ok": not report.missing and in_sync}


def run_pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Resolve, save and run: what ``python -m platform.pretrain`` does."""
    resolved = resolve_pretrain(cfg, log)
    save(resolved)
    return pretrain(resolved, log)
