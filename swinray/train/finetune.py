"""The fine-tuning driver: preprocess if needed, split, build the TorchTrainer, fit, export the best model.

    python -m platform.finetune --preset debug
    python -m platform.finetune --preset cpu-hippocampus --data data/msd/Task04_Hippocampus
    python -m platform.finetune --task BTCV --data /data/btcv --pretrained outputs/pretrain/encoder.pt
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from ray.train.torch import TorchTrainer

from swinray.config import FinetuneConfig, to_dict
from swinray.data.preprocess import preprocess_dataset
from swinray.errors import ConfigError, DatasetError, EncoderChanged
from swinray.models.registry import build_swin_unetr
from swinray.models.weights import LoadReport, load_encoder
from swinray.resolve import RESUMABLE, RUN_STORAGE_KEY, Resolved, resolve_finetune, save
from swinray.runtime import init_ray, use_gpu
from swinray.seg.evaluate import score_test_cases
from swinray.seg.postprocess import describe
from swinray.storage import copy_to_local, file_sha256, local_file, local_path, remote_of, shown, write_json
from swinray.train.finetune_loop import deadline_s, finished_by, model_kwargs, stop_cause, train_fn_per_worker
from swinray.train.seg_data import split_cases
from swinray.train.state import MODEL_FILE
from swinray.train.trainer import fit_unless_finished, loop_config, make_trainer, worker_resources
from swinray.writable import writing_to


def check_pretrained(path: str, kwargs: dict) -> LoadReport:
    """Load the SSL weights into a model like the one workers build; refuse files that give nothing."""
    try:
        report = load_encoder(build_swin_unetr(**kwargs), path, adapt_channels=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"seg.pretrained={path}: {e}") from None
    if not report.loaded:
        raise ConfigError(f"seg.pretrained={path}: no encoder tensor fits this model "
                          f"(model.feature_size={kwargs['feature_size']}?): {report.summary()}")
    return report


PRETRAINED_REPORT = "pretrained_report.json"


def encoder_digest_to_record(folder: Path, pretrained: str, digest: str) -> str | None:
    """The encoder's sha256 for ``pretrained_report.json``, refusing (``EncoderChanged``) to resume a run
    or sweep from other weights than it started from: pretraining again into the same file leaves
    config.json as it was, but the checkpoints grew from the former encoder. None for a run started
    before reports recorded it: its weights are unknown, and recording today's would vouch for them."""
    report = local_file(folder / PRETRAINED_REPORT)         # in object storage: this node may lack it
    started = any(next(folder.glob(pattern), None) for pattern in RESUMABLE) or \
        (remote_of(folder) is not None and report.is_file())  # a bucket's checkpoints are not mirrored here
    if not started:
        return digest                                         # nothing to resume
    try:
        recorded = json.loads(report.read_text()) if report.is_file() else {}
    except (OSError, ValueError):
        return None
    before = recorded.get("sha256")
    if before and before != digest:
        raise EncoderChanged(f"seg.pretrained={pretrained}: the file changed since {folder} started from it "
                             f"(sha256 {before[:12]}..., now {digest[:12]}...), and its checkpoints grew from the "
                             "former weights: give the run (or sweep) another name, or move its folder away to "
                             "start it again")
    return before


@dataclass(frozen=True)
class FinetunePlan:
    """A resolved fine-tuning run once its data is cached and split; a sweep's trials share one."""
    resolved: Resolved
    task: dict
    train: list[dict]
    val: list[dict]                     # chooses the checkpoint (a sweep's trial too)
    test: list[dict]                    # influences nothing: scored once, at the end (test_score)
    pretrained: LoadReport | None

    @property
    def cfg(self) -> FinetuneConfig:
        return self.resolved.cfg


def plan_finetune(resolved: Resolved, log=print) -> FinetunePlan:
    """Preprocess if needed, split and record the split, check the ROI and the pretrained file: fail
    here, not in a worker."""
    cfg: FinetuneConfig = resolved.cfg
    run_folder = Path(resolved.paths.split).parent
    encoder = local_file(cfg.seg.pretrained) if cfg.seg.pretrained else None    # missing: check_pretrained says so
    digest = encoder_digest_to_record(run_folder, cfg.seg.pretrained, file_sha256(encoder)) \
        if encoder and encoder.is_file() else None          # before preprocessing: a refusal comes first
    cache = preprocess_dataset(resolved.dataset, Path(resolved.paths.cache), cfg.data.max_cases, cfg.run, log)
    task = json.loads((local_path(cache["cache_dir"]) / "task.json").read_text())
    rows = json.loads(local_path(cache["manifest"]).read_text())["cases"]
    train, val, test = split_cases(rows, cfg.split)
    if len(task["label_names"]) < 2 or not val or len(train) < cfg.run.num_workers:
        raise DatasetError(f"{cache['manifest']}: {len(train)} training, {len(val)} validation and {len(test)} test "
                           f"labelled case(s) for run.num_workers={cfg.run.num_workers} and {len(task['label_names'])} "
                           f"label(s); fine-tuning needs labels, one validation case and a training case per worker "
                           f"(split.test_fraction={cfg.split.test_fraction} holds cases out for the test score)")
    report = check_pretrained(str(local_file(cfg.seg.pretrained)), model_kwargs(cfg.model)) \
        if cfg.seg.pretrained else None
    with writing_to(run_folder, RUN_STORAGE_KEY):
        write_json(resolved.paths.split, {"split": to_dict(cfg.split), "training": [r["case_id"] for r in train],
                                          "validation": [r["case_id"] for r in val],
                                          "test": [r["case_id"] for r in test]})
        if report is not None:
            write_json(run_folder / PRETRAINED_REPORT,
                       {"file": cfg.seg.pretrained, "sha256": digest, "loaded": report.loaded,
                        "missing": report.missing, "unexpected": report.unexpected,
                        "shape_mismatched": report.shape_mismatched, "notes": report.notes})
            log(f"pretrained encoder {cfg.seg.pretrained} into SwinUNETR: {report.summary()}")
    if not cfg.seg.pretrained and cfg.seg.pretrained_lr_scale != 1.0:
        log(f"warning: seg.pretrained_lr_scale={cfg.seg.pretrained_lr_scale} changes nothing: no seg.pretrained "
            "weights to scale (every layer learns at optim.lr)")
    return FinetunePlan(replace(resolved, dataset=None), task, train, val, test, report)   # trials need no dataset


def test_score(plan: FinetunePlan, model_file: Path, out_csv: Path, log) -> dict:
    """The chosen model's Dice on the held-out test cases, once, after every choice is made (the
    summary's ``test_dice`` beside the selection's ``val_dice``)."""
    if not plan.test:
        return {"test_dice": None, "test_dice_per_class": None, "num_test_cases": 0, "num_test_rejected": 0,
                "test_time_flips": None, "test_largest_component": None, "test_dice_before_postprocessing": None,
                "test_dice_per_class_before_postprocessing": None}
    log(f"scoring the chosen model once on the {len(plan.test)} held-out test case(s)")
    scores = score_test_cases(model_file, plan.test, plan.cfg.seg.sw_batch_size, plan.cfg.seg.sw_overlap, out_csv,
                              log, plan.cfg.data.limits, plan.cfg.seg.tta_flips, plan.cfg.seg.largest_component)
    if scores["num_rejected"]:
        log(f"warning: {scores['num_rejected']} of {len(plan.test)} test case(s) could not be scored: "
            + "; ".join(r["reason"] for r in scores["rejected"][:3]))
    return {"test_dice": scores["mean_dice"], "test_dice_per_class": scores["dice_per_class"],
            "test_hd95_mm_per_class": scores["hd95_mm_per_class"], "num_test_cases": scores["num_cases"],
            "num_test_rejected": scores["num_rejected"], "test_time_flips": scores["test_time_flips"],
            "test_largest_component": scores["largest_component"],
            "test_dice_before_postprocessing": scores["before_postprocessing"]["mean_dice"],
            "test_dice_per_class_before_postprocessing": scores["before_postprocessing"]["dice_per_class"],
            "test_per_case": shown(scores["per_case_csv"])}


def finetune(resolved: Resolved, log=print) -> dict:
    cfg: FinetuneConfig = resolved.cfg
    plan = plan_finetune(resolved, log)
    run_dir = Path(resolved.paths.run_dir)

    def start() -> TorchTrainer:
        cluster = init_ray(cfg.run)
        gpu = use_gpu(cfg.run)
        resources, threads = worker_resources(cluster["cpus"], cfg.run.num_workers, gpu)
        log(f"fine-tuning {cfg.run.name} on {cfg.data.task}: {len(plan.train)} training / {len(plan.val)} "
            f"validation case(s), ROI {cfg.model.roi_size}, {cfg.run.num_workers} worker(s) on "
            f"{'GPU' if gpu else 'CPU'} ({resources}), {cfg.optim.num_steps} steps -> {shown(run_dir)}")
        return make_trainer(train_fn_per_worker, loop_config(cfg, resolved.paths, threads), cfg.run, gpu, resources)

    def over(metrics: dict) -> str:
        """Whether it is over now; if so, why it stopped as its checkpoint says."""
        return stop_cause(metrics, cfg) if finished_by(metrics, cfg) else ""
    result, aim_error = fit_unless_finished(cfg.run, run_dir, cfg.optim.num_steps, f"finetune {cfg.run.name}",
                                            over, start, log, (deadline_s(cfg), "seg.max_minutes"))
    model_path = run_dir / MODEL_FILE
    with result.checkpoint.as_directory() as directory, writing_to(run_dir, RUN_STORAGE_KEY):
        copy_to_local(str(Path(directory) / MODEL_FILE), model_path)
    metrics = result.metrics or {}
    saved_model = torch.load(model_path, map_location="cpu", weights_only=True)
    saved, post = saved_model["metrics"], saved_model.get("largest_component_classes", [])
    per_class = dict(zip(plan.task["label_names"][1:], saved.get("val_dice_per_class") or []))
    log(f"best validation Dice {saved['val_dice']:.4f} at step {saved['step']} ({per_class}); "
        f"model -> {shown(model_path)}")
    kept = dict(zip(plan.task["label_names"][1:], saved.get("val_dice_per_class_largest_component") or []))
    if kept:
        log(f"validation Dice with each class's largest connected component only: {kept}; post-processing "
            f"chosen: {describe(post, plan.task['label_names'])}")
    elif cfg.seg.largest_component:
        log(f"post-processing not measured at step {saved['step']}, the best (seg.largest_component was off "
            "then, or the run is older than the setting): none applied")
    if metrics.get("diverged_step"):
        log(f"error: training diverged at step {metrics['diverged_step']} (NaN or infinite gradients); the best "
            f"model before it is kept. Lower optim.lr or raise optim.warmup_steps")
    with writing_to(run_dir, RUN_STORAGE_KEY):
        test = test_score(plan, model_path, run_dir / "test_per_case.csv", log)
    return {"command": "finetune", "task": cfg.data.task, "run_dir": shown(run_dir), "steps": metrics.get("step"),
            "stopped_by": stop_cause(metrics, cfg) or None, "train_bf16": metrics.get("train_bf16"),
            "best_val_dice": saved["val_dice"], "best_step": saved["step"], "val_dice_per_class": per_class,
            "val_dice": saved["val_dice"],
            "largest_component": [plan.task["label_names"][c] for c in post],
            "val_dice_per_class_largest_component": kept or None, **test,
            "num_training_cases": len(plan.train), "num_validation_cases": len(plan.val),
            "roi_size": list(cfg.model.roi_size), "model": shown(model_path),
            "pretrained_report": plan.pretrained.summary() if plan.pretrained else None,
            "metrics_log": shown(run_dir / "metrics.jsonl"), "split": shown(resolved.paths.split),
            "aim_repo": cfg.run.aim_repo,
            "aim_error": aim_error, "diverged_step": metrics.get("diverged_step") or None,
            "ok": saved["val_dice"] >= 0 and not metrics.get("diverged_step")}


def run_finetune(cfg: FinetuneConfig, log=print) -> dict:
    """Resolve, save and run: what ``python -m platform.finetune`` does."""
    resolved = resolve_finetune(cfg, log)
    save(resolved)
    return finetune(resolved, log)
