"""Score a fine-tuned model on every labelled case of a dataset, in each case's own voxel grid.

Dice and HD95 (mm) per class with MONAI's metrics, against the source label map, after the
prediction has been mapped back to the source grid: the numbers a user would get from the NIfTI
files ``predict`` writes. The dataset may be one the model never saw; one unreadable case is
reported and skipped, never fatal.

    python -m platform.evaluate --checkpoint outputs/finetune/model.pt --data ../shared/data/Task04_Hippocampus
"""
from __future__ import annotations

import csv
import io
import math
import re
import time

import numpy as np
import torch

from swinray.config import EvaluateConfig
from swinray.data.datasets import load_dataset
from swinray.data.nifti import CaseError
from swinray.data.tasks import task_from_dict
from swinray.errors import ConfigError, DatasetError
from swinray.models.segmenter import load_segmenter
from swinray.progress import Progress
from swinray.resolve import evaluation_dir
from swinray.seg.metrics import dice_per_case, hd95_per_case, outcomes
from swinray.seg.model_input import segment_case
from swinray.storage import local_file, write_text


def pick_device(choice: str) -> torch.device:
    """cuda when asked, or when "auto" and torch sees a GPU; the CPU otherwise."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no GPU; use device=cpu or auto")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def open_model(path: str, device: torch.device):
    """(model on ``device``, metadata); an unusable file is a one-line DatasetError naming it.
    ``path`` may be an object-store URI (a run's ``model`` in ``s3://`` storage): it is downloaded."""
    try:
        model, meta = load_segmenter(local_file(path), device)
    except (OSError, ValueError) as e:          # OSError: also an unreachable object store
        raise DatasetError(str(e)) from None
    return model.to(device), meta


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def run_evaluate(cfg: EvaluateConfig, log=print) -> dict:
    if not cfg.checkpoint or not cfg.data:
        raise DatasetError("evaluate needs --checkpoint FILE (model.pt from finetune) and --data PATH")
    device = pick_device(cfg.device)
    model, meta = open_model(cfg.checkpoint, device)
    task = task_from_dict(meta["task"])
    dataset = load_dataset(cfg.data, "auto")
    if dataset.task.num_classes != task.num_classes:
        raise DatasetError(f"{dataset.dataset_file}: {dataset.task.num_classes} label classes, the model "
                           f"{cfg.checkpoint} predicts {task.num_classes} ({', '.join(task.label_names)})")
    cases = [c for c in dataset.cases if c.label][: cfg.max_cases or None]
    if not cases:
        raise DatasetError(f"{dataset.dataset_file or dataset.root}: no labelled case to evaluate")
    names = task.label_names[1:]
    columns = [re.sub(r"\W+", "_", name).strip("_") for name in names]    # "right kidney" -> right_kidney
    out = evaluation_dir(cfg)
    log(f"evaluating {cfg.checkpoint} (task {task.name}, trained to validation Dice "
        f"{meta['metrics'].get('val_dice', float('nan')):.4f}) on {len(cases)} case(s) of {dataset.root} "
        f"-> {out}; sliding windows of {tuple(meta['roi_size'])}, overlap {cfg.sw_overlap}, "
        f"{cfg.sw_batch_size} per forward pass, on {device.type}")
    rows, rejected = [], [{"case_id": None, "reason": r} for r in dataset.rejected]
    progress = Progress(len(cases), "case", "evaluate")
    began = time.perf_counter()
    for case in cases:
        try:
            pred, label, affine, windows = segment_case(model, case, task, meta["roi_size"], cfg.sw_batch_size,
                                                        cfg.sw_overlap, device)
        except CaseError as e:
            log(f"rejected: {e}")
            rejected.append({"case_id": case.case_id, "reason": str(e)})
            progress.update()
            continue
        if not rows:
            took = time.perf_counter() - began
            log(f"first case: {windows} windows in {took:.0f} s; expect about {took * len(cases) / 60:.1f} min "
                f"for {len(cases)} case(s). Faster: a GPU (--set device=cuda), --set sw_overlap=0 (fewer "
                "windows), a larger sw_batch_size on a GPU; see docs/data.md#evaluation-speed")
        p, t = torch.from_numpy(pred)[None, None], torch.from_numpy(label.astype(np.uint8))[None, None]
        dice = dice_per_case(p, t, task.num_classes)[0].tolist()
        voxel_mm = tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))     # in the array's own axis order
        hd95 = hd95_per_case(p, t, task.num_classes, voxel_mm)[0].tolist()
        flags = {k: v[0].tolist() for k, v in outcomes(p, t, task.num_classes).items()}
        rows.append({"case_id": case.case_id, **{f"dice_{c}": d for c, d in zip(columns, dice)},
                     **{f"hd95_mm_{c}": h for c, h in zip(columns, hd95)}, "mean_dice": _mean(dice),
                     **{f"{k}_{c}": int(f) for k, v in flags.items() for c, f in zip(columns, v)}})
        progress.update()
    progress.close()
    fields = ["case_id", *[f"{k}_{c}" for k in ("dice", "hd95_mm", "false_positive", "missed") for c in columns],
              "mean_dice"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text(out / "per_case.csv", table.getvalue())
    def per_class(column: str, reduce) -> dict:
        return {n: reduce([r[f"{column}_{c}"] for r in rows]) for n, c in zip(names, columns)}
    dice_per_class = per_class("dice", _mean)
    # HD95 exists only where both sides hold the class: its mean says how many cases it covers, and a
    # missed class or a false positive is counted per class instead of silently dropped.
    hd95_per_class = per_class("hd95_mm", _mean)
    hd95_cases = per_class("hd95_mm", lambda v: sum(1 for h in v if h is not None and math.isfinite(h)))
    false_positives, missed = per_class("false_positive", sum), per_class("missed", sum)
    mean_dice = _mean(dice_per_class.values())
    log(f"mean foreground Dice {mean_dice} over {len(rows)} case(s): {dice_per_class}; HD95 mm: {hd95_per_class} "
        f"over {hd95_cases} case(s); missed: {missed}; false positives on absent classes: {false_positives}")
    return {"command": "evaluate", "checkpoint": cfg.checkpoint, "data": str(dataset.root), "task": task.name,
            "num_cases": len(rows), "num_rejected": len(rejected), "rejected": rejected,
            "dice_per_class": dice_per_class, "mean_dice": mean_dice, "hd95_mm_per_class": hd95_per_class,
            "hd95_cases_per_class": hd95_cases, "missed_cases_per_class": missed,
            "false_positive_cases_per_class": false_positives,
            "per_case_csv": str(csv_path), "ok": bool(rows)}
