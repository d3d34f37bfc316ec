"""The fine-tuning driver: preprocess if needed, split, build the TorchTrainer, fit, export the best model.

    python -m platform.finetune --preset debug
    python -m platform.finetune --preset cpu-hippocampus --data ../shared/data/Task04_Hippocampus
    python -m platform.finetune --task BTCV --data /data/btcv --pretrained outputs/pretrain/encoder.pt
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models.registry import build_swin_unetr
from models.ssl import check_roi_size
from models.weights import LoadReport, load_encoder
from swinray.config import ConfigError, FinetuneConfig, PreprocessConfig, to_dict
from swinray.data.cache import write_json
from swinray.data.preprocess import run_preprocess
from swinray.progress import follow_run
from swinray.runtime import init_ray, use_gpu
from swinray.storage import copy_to_local, is_uri, local_file, local_path, shown
from swinray.tracking import aim_repo_for
from swinray.train.finetune_loop import MODEL_FILE, train_fn_per_worker
from swinray.train.seg_data import split_cases
from swinray.train.trainer import make_trainer, worker_resources


def model_kwargs(cfg: FinetuneConfig, in_channels: int, num_classes: int) -> dict:
    """What ``build_swin_unetr`` needs; saved in the model file so evaluation can rebuild it."""
    return {"in_channels": in_channels, "out_channels": num_classes, "feature_size": cfg.model.feature_size,
            "window_size": cfg.model.window_size}


def with_pretrained_located(cfg: FinetuneConfig) -> FinetuneConfig:
    """``seg.pretrained`` as workers on any node find it: an absolute (shared) path, or an object-store
    URI, kept as such (each node downloads it to its mirror)."""
    if not cfg.seg.pretrained or is_uri(cfg.seg.pretrained):
        return cfg
    return replace(cfg, seg=replace(cfg.seg, pretrained=str(local_path(cfg.seg.pretrained))))


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


@dataclass(frozen=True)
class FinetunePlan:
    """Everything a fine-tuning run needs once the data is cached and split; a sweep shares one."""
    cfg: FinetuneConfig
    task: dict
    train: list[dict]
    val: list[dict]
    roi: tuple[int, int, int]
    model: dict                         # build_swin_unetr kwargs
    pretrained_report: str | None

    def loop_config(self, cfg: FinetuneConfig, run_dir: Path, threads: int) -> dict:
        """``train_loop_config`` for the workers; ``cfg`` may differ from the plan's in hyperparameters."""
        return {"cfg": to_dict(cfg), "model": self.model, "roi_size": list(self.roi), "task": self.task,
                "train_paths": [r["path"] for r in self.train], "val_paths": [r["path"] for r in self.val],
                "run_dir": str(run_dir), "aim_repo": aim_repo_for(cfg.run.aim_repo, cfg.run.storage),
                "threads_per_worker": threads}


def plan_finetune(cfg: FinetuneConfig, log=print) -> tuple[FinetunePlan, LoadReport | None]:
    """Preprocess if needed, split, check the ROI and the pretrained file: fail here, not in a worker.

    Returns the plan and the pretrained-weight load report (None without pretrained weights).
    """
    cache = run_preprocess(PreprocessConfig(data=cfg.data, run=cfg.run), log)
    cache_dir = local_path(cache["cache_dir"])
    task = json.loads((cache_dir / "task.json").read_text())
    rows = json.loads(local_path(cache["manifest"]).read_text())["cases"]
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
    report = check_pretrained(str(local_file(cfg.seg.pretrained)), kwargs) if cfg.seg.pretrained else None
    return FinetunePlan(cfg, task, train, val, roi, kwargs, report.summary() if report else None), report


def write_run_records(plan: FinetunePlan, report, run_dir: Path) -> None:
    write_json(run_dir / "split.json", {"split": to_dict(plan.cfg.split), "training": [r["case_id"] for r in plan.train],
                                        "validation": [r["case_id"] for r in plan.val]})
    if report is not None:
        write_json(run_dir / "pretrained_report.json", {"file": plan.cfg.seg.pretrained, "loaded": report.loaded,
                                                        "missing": report.missing, "unexpected": report.unexpected,
                                                        "shape_mismatched": report.shape_mismatched,
                                                        "notes": report.notes})


def run_finetune(cfg: FinetuneConfig, log=print) -> dict:
    aim_repo = aim_repo_for(cfg.run.aim_repo, cfg.run.storage)     # a bad setting fails before any work
    cfg = with_pretrained_located(cfg)
    plan, report = plan_finetune(cfg, log)
    run_dir = local_path(cfg.run.storage) / cfg.run.name
    write_run_records(plan, report, run_dir)
    if report is not None:
        log(f"pretrained encoder {cfg.seg.pretrained} into SwinUNETR: {plan.pretrained_report}")

    cluster = init_ray(cfg.run)
    gpu = use_gpu(cfg.run)
    resources, threads = worker_resources(cluster["cpus"], cfg.run.num_workers, gpu)
    log(f"fine-tuning {cfg.run.name} on {plan.task['name']}: {len(plan.train)} training / {len(plan.val)} "
        f"validation case(s), ROI {plan.roi}, {cfg.run.num_workers} worker(s) on {'GPU' if gpu else 'CPU'} "
        f"({resources}), {cfg.optim.num_steps} steps -> {shown(run_dir)}")
    trainer = make_trainer(train_fn_per_worker, plan.loop_config(cfg, run_dir, threads), cfg.run, gpu, resources)
    with follow_run(run_dir / "metrics.jsonl", cfg.optim.num_steps, f"finetune {cfg.run.name}"):
        result = trainer.fit()
    model_path = run_dir / MODEL_FILE
    with result.checkpoint.as_directory() as directory:
        copy_to_local(str(Path(directory) / MODEL_FILE), model_path)
    metrics = result.metrics or {}
    saved = torch.load(model_path, map_location="cpu", weights_only=True)["metrics"]
    per_class = dict(zip(plan.task["label_names"][1:], saved.get("val_dice_per_class") or []))
    log(f"best validation Dice {saved['val_dice']:.4f} at step {saved['step']} ({per_class}); model -> {shown(model_path)}")
    if metrics.get("diverged_step"):
        log(f"error: training diverged at step {metrics['diverged_step']} (NaN or infinite gradients); the best "
            f"model before it is kept. Lower optim.lr or raise optim.warmup_steps")
    if metrics.get("aim_error"):
        log(f"warning: Aim tracking failed during the run ({metrics['aim_error']}); "
            f"metrics are in {shown(run_dir / 'metrics.jsonl')}")
    return {"command": "finetune", "task": plan.task["name"], "run_dir": shown(run_dir), "steps": metrics.get("step"),
            "best_val_dice": saved["val_dice"], "best_step": saved["step"], "val_dice_per_class": per_class,
            "num_training_cases": len(plan.train), "num_validation_cases": len(plan.val), "roi_size": list(plan.roi),
            "model": shown(model_path), "pretrained_report": plan.pretrained_report,
            "metrics_log": shown(run_dir / "metrics.jsonl"), "split": shown(run_dir / "split.json"),
            "aim_repo": aim_repo,
            "aim_error": metrics.get("aim_error") or None, "diverged_step": metrics.get("diverged_step") or None,
            "ok": saved["val_dice"] >= 0 and not metrics.get("diverged_step")}
