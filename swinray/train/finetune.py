"""The fine-tuning driver: preprocess if needed, split, build the TorchTrainer, fit, export the best model.

    python -m platform.finetune --preset debug
    python -m platform.finetune --preset cpu-hippocampus --data ../shared/data/Task04_Hippocampus
    python -m platform.finetune --task BTCV --data /data/btcv --pretrained outputs/pretrain/encoder.pt
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from models.registry import build_swin_unetr
from models.ssl import check_roi_size
from models.weights import load_encoder
from swinray.config import ConfigError, FinetuneConfig, PreprocessConfig, to_dict
from swinray.data.cache import write_json
from swinray.data.preprocess import run_preprocess
from swinray.runtime import init_ray, use_gpu
from swinray.tracking import aim_repo_for
from swinray.train.finetune_loop import MODEL_FILE, train_fn_per_worker
from swinray.train.pretrain import worker_resources
from swinray.train.seg_data import split_cases


def model_kwargs(cfg: FinetuneConfig, in_channels: int, num_classes: int) -> dict:
    """What ``build_swin_unetr`` needs; saved in the model file so evaluation can rebuild it."""
    return {"in_channels": in_channels, "out_channels": num_classes, "feature_size": cfg.model.feature_size,
            "window_size": cfg.model.window_size}


def check_pretrained(path: str, kwargs: dict):
    """Load the SSL weights into a model like the one workers build; refuse files that give nothing."""
    try:
        report = load_encoder(build_swin_unetr(**kwargs), path, adapt_channels=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"seg.pretrained={path}: {e}") from None
    if not report.loaded:
        raise ConfigError(f"seg.pretrained={path}: no encoder tensor fits this model "
                          f"(model.feature_size={kwargs['feature_size']}?): {report.summary()}")
    return report


def run_finetune(cfg: FinetuneConfig, log=print) -> dict:
    if cfg.seg.pretrained:  # workers on other nodes must find it: an absolute (shared) path
        cfg = replace(cfg, seg=replace(cfg.seg, pretrained=os.path.abspath(cfg.seg.pretrained)))
    cache = run_preprocess(PreprocessConfig(data=cfg.data, run=cfg.run), log)
    cache_dir = Path(cache["cache_dir"])
    task = json.loads((cache_dir / "task.json").read_text())
    rows = json.loads(Path(cache["manifest"]).read_text())["cases"]
    train, val = split_cases(rows, cfg.split)
    if len(task["label_names"]) < 2 or not val or len(train) < cfg.run.num_workers:
        raise ConfigError(f"{cache['manifest']}: {len(train)} training and {len(val)} validation labelled "
                          f"case(s) for run.num_workers={cfg.run.num_workers} and {len(task['label_names'])} "
                          f"label(s); fine-tuning needs labels, one validation case and a training case per worker")
    if cfg.seg.val_every_steps < 1 or cfg.run.checkpoint_every_steps < 1:
        raise ConfigError(f"seg.val_every_steps={cfg.seg.val_every_steps}, run.checkpoint_every_steps="
                          f"{cfg.run.checkpoint_every_steps}: both must be at least 1")
    roi = tuple(cfg.model.roi_size) if any(cfg.model.roi_size) else tuple(task["roi_size"])
    try:
        check_roi_size(roi)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    kwargs = model_kwargs(cfg, rows[0]["shape"][0], len(task["label_names"]))
    storage = Path(cfg.run.storage).resolve()
    run_dir = storage / cfg.run.name
    write_json(run_dir / "split.json", {"split": to_dict(cfg.split), "training": [r["case_id"] for r in train],
                                        "validation": [r["case_id"] for r in val]})
    pretrained_report = None
    if cfg.seg.pretrained:
        report = check_pretrained(cfg.seg.pretrained, kwargs)
        pretrained_report = report.summary()
        log(f"pretrained encoder {cfg.seg.pretrained} into SwinUNETR: {pretrained_report}")
        write_json(run_dir / "pretrained_report.json", {"file": cfg.seg.pretrained, "loaded": report.loaded,
                                                        "missing": report.missing, "unexpected": report.unexpected,
                                                        "shape_mismatched": report.shape_mismatched,
                                                        "notes": report.notes})

    cluster = init_ray(cfg.run)
    gpu = use_gpu(cfg.run)
    resources, threads = worker_resources(cluster["cpus"], cfg.run.num_workers, gpu)
    log(f"fine-tuning {cfg.run.name} on {task['name']}: {len(train)} training / {len(val)} validation case(s), "
        f"ROI {roi}, {cfg.run.num_workers} worker(s) on {'GPU' if gpu else 'CPU'} ({resources}), "
        f"{cfg.optim.num_steps} steps -> {run_dir}")
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "model": kwargs, "roi_size": list(roi), "task": task,
                           "train_paths": [r["path"] for r in train], "val_paths": [r["path"] for r in val],
                           "run_dir": str(run_dir),
                           "aim_repo": aim_repo_for(cfg.run.aim_repo, cfg.run.storage),
                           "threads_per_worker": threads},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.num_checkpoints_kept),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures)),
    )
    result = trainer.fit()
    model_path = run_dir / MODEL_FILE
    with result.checkpoint.as_directory() as directory:
        shutil.copyfile(Path(directory) / MODEL_FILE, model_path)
    metrics = result.metrics or {}
    saved = torch.load(model_path, map_location="cpu", weights_only=True)["metrics"]
    per_class = dict(zip(task["label_names"][1:], saved.get("val_dice_per_class") or []))
    log(f"best validation Dice {saved['val_dice']:.4f} at step {saved['step']} ({per_class}); model -> {model_path}")
    if metrics.get("aim_error"):
        log(f"warning: Aim tracking failed during the run ({metrics['aim_error']}); "
            f"metrics are in {run_dir / 'metrics.jsonl'}")
    return {"command": "finetune", "task": task["name"], "run_dir": str(run_dir), "steps": metrics.get("step"),
            "best_val_dice": saved["val_dice"], "best_step": saved["step"], "val_dice_per_class": per_class,
            "num_training_cases": len(train), "num_validation_cases": len(val), "roi_size": list(roi),
            "model": str(model_path), "pretrained_report": pretrained_report,
            "metrics_log": str(run_dir / "metrics.jsonl"), "split": str(run_dir / "split.json"),
            "aim_repo": aim_repo_for(cfg.run.aim_repo, cfg.run.storage),
            "aim_error": metrics.get("aim_error") or None, "ok": saved["val_dice"] >= 0}
