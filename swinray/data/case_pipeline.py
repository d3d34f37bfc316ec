"""One case through validation, MONAI preprocessing and the cache: the work of a Ray Data task.

``preprocess.py`` maps it over a Ray Data dataset; the benchmark's baseline runs the same
transforms in a plain loop.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from swinray.config import VolumeLimits
from swinray.data.cache import case_paths, source_stamp, write_case
from swinray.data.cases import Case
from swinray.data.nifti import CaseError, CaseReadError, check_channels, check_label, ras_spacing, read_verified
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import as_meta_tensor, foreground_threshold, preprocess_transforms
from swinray.errors import StorageError

_STAT_STRIDE = 2  # statistics from every 2nd voxel along each axis: 8x cheaper, and the
                  # strided view is read in place where every 7th masked voxel needed a full mask copy


@functools.lru_cache(maxsize=8)
def _transforms(task: TaskSpec, labelled: bool):
    return preprocess_transforms(task, labelled)


def load_case(case: Case, task: TaskSpec, limits: VolumeLimits = VolumeLimits()
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    """Verified (C, X, Y, Z) image, (X, Y, Z) label or None, affine and source checksums; every file
    within ``limits``, its resampling to the task's spacing too, checked before it is read."""
    volumes = [read_verified(p, limits, task.spacing_mm) for p in case.image]
    if len(volumes) == 1:
        image = check_channels(volumes[0], case.image[0], task.num_channels)
    else:  # one file per channel, as MSD allows
        if len(volumes) != task.num_channels:
            raise CaseError(f"{case.image[0]}: {len(volumes)} channel files, the task expects "
                            f"{task.num_channels}")
        for v, p in zip(volumes[1:], case.image[1:]):
            if v.array.shape != volumes[0].array.shape or not np.allclose(v.affine, volumes[0].affine, atol=1e-3):
                raise CaseError(f"{p}: channel geometry differs from {case.image[0]}")
        image = np.stack([check_channels(v, p, 1)[0] for v, p in zip(volumes, case.image)])
    checksums = [v.sha256 for v in volumes]
    label = None
    if case.label:
        label_volume = read_verified(case.label, limits, task.spacing_mm)
        label = check_label(label_volume, case.label, volumes[0], case.image[0], task.num_classes)
        checksums.append(label_volume.sha256)
    threshold = foreground_threshold(task)
    if not (image > threshold).any():
        raise CaseError(f"{case.image[0]}: empty foreground (no voxel above {threshold:g}"
                        f"{' HU' if task.intensity == 'ct_window' else ''})")
    return image, label, volumes[0].affine, checksums


def intensity_stats(image: np.ndarray, threshold: float) -> dict:
    """Per-channel statistics of the source foreground, before normalisation. A foreground so sparse
    that the strided sample misses it is measured on every voxel (``load_case`` saw at least one)."""
    sample = image[:, ::_STAT_STRIDE, ::_STAT_STRIDE, ::_STAT_STRIDE]
    mask = (sample > threshold).any(axis=0)
    if not mask.any():
        sample, mask = image, (image > threshold).any(axis=0)
    values = [channel[mask].astype(np.float32) for channel in sample]
    pct = np.array([np.percentile(v, [0.5, 50, 99.5]) for v in values])
    return {"p00_5": pct[:, 0].tolist(), "p50": pct[:, 1].tolist(), "p99_5": pct[:, 2].tolist(),
            "mean": [float(v.mean()) for v in values], "std": [float(v.std()) for v in values]}


def process_case(case: Case, task: TaskSpec, cache: Path, limits: VolumeLimits = VolumeLimits()) -> dict:
    """Validate, preprocess and write one case; return its manifest or rejection row. A rejection of
    the input itself (CaseError) carries its source stamp and limits, so a rerun can skip it while
    neither changes; an unexpected error carries neither and is retried. A cache that cannot be
    written (StorageError) makes a "fault" row: the driver stops the run, no case is refused for it."""
    start = time.perf_counter()
    base = {"case_id": case.case_id, "split": case.split, "image": list(case.image), "label": case.label,
            **({"collection": case.collection} if case.collection else {})}
    stamp = None
    try:
        stamp = source_stamp(case)     # downloads a source in object storage (the phantom) first
        image, label, affine, checksums = load_case(case, task, limits)
        data = {"image": as_meta_tensor(image, affine)}
        if label is not None:
            data["label"] = as_meta_tensor(label[None], affine)
        out = _transforms(task, label is not None)(data)
        image_out = out["image"].numpy()
        label_out = out["label"].numpy()[0] if label is not None else None
        row = {**base, "status": "written", "path": str(case_paths(cache, case.case_id)[0]),
               "shape": list(image_out.shape), "source_shape": list(image.shape),
               "spacing_mm": list(task.spacing_mm), "source_spacing_mm": ras_spacing(affine),
               "affine": out["image"].affine.tolist(), "source_affine": affine.tolist(),
               "intensity": intensity_stats(image, foreground_threshold(task)),
               "class_voxels": (np.bincount(label_out.ravel(), minlength=task.num_classes).tolist()
                                if label_out is not None else None),
               "sha256": checksums, "source_stamp": stamp}
        write_case(cache, case.case_id, image_out, label_out, row)
    except StorageError as e:
        row = {**base, "status": "fault", "reason": str(e), "fault": [e.path, e.code, e.key]}
    except CaseError as e:
        remembered = stamp is not None and not isinstance(e, CaseReadError)
        row = {**base, "status": "rejected", "reason": str(e),
               **({"source_stamp": stamp, "limits": asdict(limits)} if remembered else {})}
    except Exception as e:  # one bad case never stops a run: report it with its file
        row = {**base, "status": "rejected",
               "reason": f"{case.image[0]}: unexpected {type(e).__name__}: {e}"}
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


