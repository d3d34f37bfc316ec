"""Score a fine-tuned model on every labelled case of a dataset, in each case's own voxel grid.

Dice and HD95 (mm) per class with MONAI's metrics, against the source label map, after the
prediction has been mapped back to the source grid: the numbers a user would get from the NIfTI
files ``predict`` writes. The dataset may be one the model never saw; a case that fails for any
reason is reported with that reason and skipped, never fatal: the CSV and the summary always come.

    python -m platform.evaluate --checkpoint outputs/finetune/model.pt --data ../shared/data/Task04_Hippocampus
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from swinray.config import EvaluateConfig, VolumeLimits
from swinray.data.admission import admit
from swinray.data.cases import Case
from swinray.data.datasets import load_dataset
from swinray.data.nifti import CaseError
from swinray.data.tasks import task_from_dict
from swinray.errors import ConfigError, DatasetError
from swinray.models.segmenter import load_segmenter
from swinray.progress import Progress
from swinray.resolve import evaluation_dir
from swinray.seg.inference import Mirrors
from swinray.seg.metrics import dice_per_case, hd95_per_case, outcomes
from swinray.seg.model_input import segment_case
from swinray.seg.postprocess import chosen_classes, describe
from swinray.storage import fetch, local_file, local_path, write_text
from swinray.writable import writing_to


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


SPLIT_KEYS = {"test": "test", "validation": "validation", "train": "training"}


def cases_of_split(labelled: list[Case], split_file: Path | None, which: str, log) -> list[Case]:
    """The labelled cases ``--split`` asks for, by the run's ``split.json``: ``test`` is its held-out
    cases plus any the run never saw (another dataset's); ``train`` and ``validation`` its own lists;
    ``all`` every case. Without a split.json every case counts as unseen, and only ``test`` or ``all``
    may score them."""
    if which == "all":
        return labelled
    if split_file is None:
        raise ConfigError(f"split={which}: there is no split.json beside the model file to tell which cases it "
                          "trained on; --split all scores every case (say so, e.g. for a dataset it never saw)")
    try:
        record = json.loads(split_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{split_file}: cannot read the run's split ({type(e).__name__}: {e})") from None
    if which == "test":
        seen = set(record.get("training", [])) | set(record.get("validation", []))
        return [c for c in labelled if c.case_id in set(record.get("test", [])) or c.case_id not in seen]
    return [c for c in labelled if c.case_id in set(record.get(SPLIT_KEYS[which], []))]


def case_failure(case: Case, error: Exception) -> str:
    """Why a case could not be done: a CaseError names its file; anything else is named with the
    case's image, so one odd case is a row, not the end of the command."""
    if isinstance(error, CaseError):
        return str(error)
    return f"{case.image[0]}: unexpected {type(error).__name__}: {error}"


def score_cases(model, meta: dict, cases: list[Case], sw_batch_size: int, sw_overlap: float, device, log,
                desc: str = "evaluate", limits: VolumeLimits = VolumeLimits(),
                tta_flips: bool = True, largest_component: bool = True) -> tuple[list[dict], list[dict], dict]:
    """(per-case rows, rejected cases, summary): each case segmented in its own voxel grid (averaged
    over the model's test-time flips when ``tta_flips``, post-processed as its validation chose when
    ``largest_component``) and scored against its source label map, Dice and HD95 in mm per class
    (``swinray.seg.metrics``); the summary also has the Dice before post-processing."""
    task = task_from_dict(meta["task"])
    mirrors = Mirrors.of_model(meta, tta_flips)
    post = chosen_classes(meta, largest_component)
    names = task.label_names[1:]
    columns = [re.sub(r"\W+", "_", name).strip("_") for name in names]    # "right kidney" -> right_kidney
    rows, rejected, dice_before = [], [], []
    progress = Progress(len(cases), "case", desc)
    began = time.perf_counter()
    for case in cases:
        try:
            done = segment_case(model, case, task, meta["roi_size"], sw_batch_size, sw_overlap, device, limits,
                                mirrors, post)
            affine, windows = done.affine, done.windows
            p, t = torch.from_numpy(done.labels)[None, None], torch.from_numpy(done.truth.astype(np.uint8))[None, None]
            dice = dice_per_case(p, t, task.num_classes)[0].tolist()
            raw = dice_per_case(torch.from_numpy(done.unprocessed)[None, None], t, task.num_classes)[0].tolist() \
                if post else dice
            voxel_mm = tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))     # in the array's own axis order
            hd95 = hd95_per_case(p, t, task.num_classes, voxel_mm)[0].tolist()
            flags = {k: v[0].tolist() for k, v in outcomes(p, t, task.num_classes).items()}
        except Exception as e:  # one failing case never stops the evaluation
            log(f"rejected: {case_failure(case, e)}")
            rejected.append({"case_id": case.case_id, "reason": case_failure(case, e)})
            progress.update()
            continue
        if not rows:
            took = time.perf_counter() - began
            log(f"first case: {windows} windows in {took:.0f} s; expect about {took * len(cases) / 60:.1f} min "
                f"for {len(cases)} case(s). Faster: a GPU, less window overlap (sw_overlap=0), a larger "
                "sw_batch_size on a GPU, one pass (tta_flips=false); see docs/data.md#evaluation-speed")
        dice_before.append(raw)
        rows.append({"case_id": case.case_id, **{f"dice_{c}": d for c, d in zip(columns, dice)},
                     **({f"dice_before_postprocessing_{c}": d for c, d in zip(columns, raw)} if post else {}),
                     **{f"hd95_mm_{c}": h for c, h in zip(columns, hd95)}, "mean_dice": _mean(dice),
                     **{f"{k}_{c}": int(f) for k, v in flags.items() for c, f in zip(columns, v)}})
        progress.update()
    progress.close()

    def per_class(column: str, reduce) -> dict:
        return {n: reduce([r[f"{column}_{c}"] for r in rows]) for n, c in zip(names, columns)}
    dice_per_class = per_class("dice", _mean)
    # HD95 exists only where both sides hold the class: its mean says how many cases it covers, and a
    # missed class or a false positive is counted per class instead of silently dropped.
    before = {n: _mean(d[i] for d in dice_before) for i, n in enumerate(names)}
    summary = {"num_cases": len(rows), "test_time_flips": list(mirrors.axes), "dice_per_class": dice_per_class,
               "mean_dice": _mean(dice_per_class.values()),
               "largest_component": [task.label_names[c] for c in post],
               "before_postprocessing": {"mean_dice": _mean(before.values()), "dice_per_class": before},
               "hd95_mm_per_class": per_class("hd95_mm", _mean),
               "hd95_cases_per_class": per_class("hd95_mm", lambda v: sum(1 for h in v if h is not None
                                                                          and math.isfinite(h))),
               "missed_cases_per_class": per_class("missed", sum),
               "false_positive_cases_per_class": per_class("false_positive", sum)}
    if post:
        log(f"{desc}: before post-processing, mean foreground Dice {summary['before_postprocessing']['mean_dice']}: "
            f"{before}")
    log(f"{desc}: mean foreground Dice {summary['mean_dice']} over {len(rows)} case(s): {dice_per_class}; "
        f"HD95 mm: {summary['hd95_mm_per_class']} over {summary['hd95_cases_per_class']} case(s); missed: "
        f"{summary['missed_cases_per_class']}; false positives on absent classes: "
        f"{summary['false_positive_cases_per_class']}")
    return rows, rejected, summary


def write_per_case(rows: list[dict], path: Path) -> Path:
    """The per-case rows as CSV (columns: case_id, dice_<class>, dice_before_postprocessing_<class> when the
    model post-processes, hd95_mm_<class>, false_positive_<class>, missed_<class>, mean_dice)."""
    table = io.StringIO()
    fields = list(rows[0]) if rows else ["case_id", "mean_dice"]
    writer = csv.DictWriter(table, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, table.getvalue())


def score_test_cases(model_file: str | Path, rows: list[dict], sw_batch_size: int, sw_overlap: float, out_csv: Path,
                     log, limits: VolumeLimits = VolumeLimits(), tta_flips: bool = True,
                     largest_component: bool = True) -> dict:
    """A run's chosen model scored once on its held-out test cases (manifest rows), with the code and
    metrics of ``evaluate``; nothing it returns chooses anything. Runs here, on a GPU if torch sees one."""
    device = pick_device("auto")
    model, meta = open_model(str(model_file), device)
    cases = [Case(r["case_id"], tuple(r["image"]), r["label"], r["split"]) for r in rows]
    scored, rejected, summary = score_cases(model, meta, cases, sw_batch_size, sw_overlap, device, log, desc="test",
                                            limits=limits, tta_flips=tta_flips, largest_component=largest_component)
    return {**summary, "num_rejected": len(rejected), "rejected": rejected,
            "per_case_csv": str(write_per_case(scored, out_csv))}


def run_evaluate(cfg: EvaluateConfig, log=print) -> dict:
    if not cfg.checkpoint or not cfg.data:
        raise DatasetError("evaluate needs --checkpoint FILE (model.pt from finetune) and --data PATH")
    device = pick_device(cfg.device)
    model, meta = open_model(cfg.checkpoint, device)
    task = task_from_dict(meta["task"])
    dataset = load_dataset(cfg.data, "auto", cfg.limits, log)
    if dataset.task.num_classes != task.num_classes:
        raise DatasetError(f"{dataset.dataset_file}: {dataset.task.num_classes} label classes, the model "
                           f"{cfg.checkpoint} predicts {task.num_classes} ({', '.join(task.label_names)})")
    split_file = local_path(cfg.checkpoint).parent / "split.json"
    split_file = split_file if fetch(split_file) else None
    cases = cases_of_split([c for c in dataset.cases if c.label], split_file, cfg.split, log)[: cfg.max_cases or None]
    if not cases:
        raise DatasetError(f"{dataset.dataset_file or dataset.root}: no labelled case of split={cfg.split} to "
                           f"evaluate (by {split_file}); --split all scores every case")
    out = evaluation_dir(cfg)
    log(f"evaluating {cfg.checkpoint} (task {task.name}, trained to validation Dice "
        f"{meta['metrics'].get('val_dice', float('nan')):.4f}) on {len(cases)} {cfg.split} case(s) of "
        f"{dataset.root} -> {out}; sliding windows of {tuple(meta['roi_size'])}, overlap {cfg.sw_overlap}, "
        f"{cfg.sw_batch_size} per forward pass, {Mirrors.of_model(meta, cfg.tta_flips).describe()}, "
        f"{describe(chosen_classes(meta, cfg.largest_component), task.label_names, meta)}, on {device.type}")
    admission = admit(cases, task.spacing_mm, cfg.limits)   # none far above the median case
    for _, reason in admission.refused:
        log(f"rejected: {reason}")
    rows, rejected, summary = score_cases(model, meta, admission.admitted, cfg.sw_batch_size, cfg.sw_overlap,
                                          device, log, limits=cfg.limits, tta_flips=cfg.tta_flips,
                                          largest_component=cfg.largest_component)
    with writing_to(out, "out_dir"):
        csv_path = write_per_case(rows, out / "per_case.csv")
    rejected = ([{"case_id": None, "reason": r} for r in dataset.rejected]
                + [{"case_id": c.case_id, "reason": r} for c, r in admission.refused] + rejected)
    return {"command": "evaluate", "checkpoint": cfg.checkpoint, "data": str(dataset.root), "task": task.name,
            "split": cfg.split, **summary, "num_rejected": len(rejected), "rejected": rejected,
            "per_case_csv": str(csv_path), "ok": bool(rows)}
