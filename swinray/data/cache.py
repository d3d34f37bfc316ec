"""The preprocessed cache: one memory-mappable file per case, a manifest and a fingerprint.

A case is one ``.npy`` file holding a single record with an ``image`` field (C, X, Y, Z) float16
and, when labelled, a ``label`` field (X, Y, Z) uint8: standard NumPy, so
``np.load(path, mmap_mode="r")`` maps it without reading. Its ``.json`` sidecar (provenance and
statistics) is written last and marks the case as done; both are written to a temporary name and
renamed, so a crash never leaves a half-written case that counts as done.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from swinray.config import VolumeLimits
from swinray.data.cases import Case, Dataset
from swinray.data.tasks import TaskSpec
from swinray.storage import atomic_write, exists, fetch, local_path, remote_of, shown
from swinray.writable import writing_to

PIPELINE_VERSION = 1  # bump when the transforms change meaning, so old caches are not reused


def preprocessing_settings(task: TaskSpec) -> dict:
    """What preprocessing reads of a task; the rest (its name, the training ROI) leaves cases unchanged."""
    return {"modality": task.modality, "channels": list(task.channel_names), "classes": task.num_classes,
            "spacing_mm": list(task.spacing_mm), "intensity": task.intensity,
            "window_hu": list(task.window_hu) if task.window_hu else None}


def cache_dir_for(dataset: Dataset, cache_root: str | Path) -> Path:
    """``<root>/<task>-<hash>``: the hash covers the dataset root and what preprocessing reads, so
    every command and preset that preprocesses the same data alike shares one cache. An object-store
    root (or dataset) is named by its URI, so every node's mirror finds one cache."""
    settings = {"root": shown(dataset.root), "preprocessing": preprocessing_settings(dataset.task),
                "version": PIPELINE_VERSION, **({"sources": list(dataset.sources)} if dataset.sources else {})}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return local_path(cache_root) / f"{dataset.task.name}-{digest}"


def case_paths(cache: Path, case_id: str) -> tuple[Path, Path]:
    return cache / "cases" / f"{case_id}.npy", cache / "cases" / f"{case_id}.json"


def rejection_path(cache: Path, case_id: str) -> Path:
    """Where a case refused for its input is remembered, with the stamp and limits it was refused under."""
    return cache / "cases" / f"{case_id}.rejected.json"


def source_stamp(case: Case) -> list[list]:
    """Size and mtime of every source file: a cached case is stale when its sources change. A file
    mirrored from object storage is named by its URI and has no mtime: each node's download has its own.
    Such a file is downloaded here first, for the stamp and for the read that follows."""
    stamp = []
    for f in [*case.image, *([case.label] if case.label else [])]:
        try:
            uri = remote_of(f)
            if uri:
                fetch(f)
            info = os.stat(f)
            stamp.append([uri, info.st_size, None] if uri else [f, info.st_size, info.st_mtime_ns])
        except FileNotFoundError:
            stamp.append([f, None, None])
    return stamp


def cached_row(cache: Path, case: Case, limits: VolumeLimits = VolumeLimits()) -> dict | None:
    """The manifest row of a finished, up-to-date case, or its rejection row when its sources and the
    limits are those it was refused under; None when it must be (re)done."""
    data_path, meta_path = case_paths(cache, case.case_id)
    row, stamp = _read_row(meta_path), None
    if row is not None and exists(data_path) and row.get("source_stamp") == (stamp := source_stamp(case)):
        # The case as the dataset file lists it now (its split may have been edited), and where this
        # node finds it (its mirror may sit elsewhere than the writer's)
        return {**row, "path": str(data_path), "split": case.split, "image": list(case.image), "label": case.label}
    row = _read_row(rejection_path(cache, case.case_id))
    if row is not None and _absolute(row.get("limits") or {}) == _absolute(asdict(limits)) and \
            row.get("source_stamp") == (stamp if stamp is not None else source_stamp(case)):
        return {**row, "split": case.split, "image": list(case.image), "label": case.label}
    return None


def _absolute(limits: dict) -> dict:
    """The limits a worker refuses a case under; the relative ones are the driver's, decided each run."""
    return {k: v for k, v in limits.items() if k not in ("max_times_median", "relative_floor_mb")}


def _read_row(path: Path) -> dict | None:
    try:
        fetch(path)
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


CACHE_KEY = "data.cache_dir"           # the setting that places the cache: named when it cannot be written


def write_case(cache: Path, case_id: str, image: np.ndarray, label: np.ndarray | None, row: dict) -> None:
    """The case's ``.npy``, then its sidecar; a refused or full cache is a StorageError naming it."""
    data_path, meta_path = case_paths(cache, case_id)
    arrays = {"image": image, **({"label": label} if label is not None else {})}
    record = np.dtype([(name, a.dtype, a.shape) for name, a in arrays.items()])

    def write(f):  # the .npy of a one-record array, streamed field by field: no 35 MB copy
        header = {"descr": np.lib.format.dtype_to_descr(record), "fortran_order": False, "shape": (1,)}
        np.lib.format.write_array_header_2_0(f, header)
        for a in arrays.values():
            np.ascontiguousarray(a).tofile(f)

    with writing_to(cache, CACHE_KEY):
        atomic_write(data_path, write)
        atomic_write(meta_path, lambda f: f.write(json.dumps(row).encode()))


def read_case(path: str | Path, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, label or None) of a cached case, memory-mapped unless ``mmap`` is False; a case in
    object storage is downloaded to this node's mirror first."""
    fetch(path)
    record = np.load(path, mmap_mode="r" if mmap else None)
    label = record["label"][0] if "label" in record.dtype.names else None
    return record["image"][0], label


def fingerprint(rows: list[dict]) -> dict:
    """Dataset-level statistics, as nnU-Net writes next to its preprocessed data."""
    if not rows:
        return {"num_cases": 0}
    spacing = np.array([r["source_spacing_mm"] for r in rows])
    shapes = np.array([r["shape"][1:] for r in rows])
    p = {k: np.median([r["intensity"][k] for r in rows], axis=0).tolist()
         for k in ("p00_5", "p50", "p99_5", "mean", "std")}
    counts = np.sum([r["class_voxels"] for r in rows if r.get("class_voxels")], axis=0)
    return {
        "num_cases": len(rows),
        "median_source_spacing_mm": np.median(spacing, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "min_shape": shapes.min(axis=0).tolist(),
        "max_shape": shapes.max(axis=0).tolist(),
        "median_intensity_percentiles": p,
        "class_voxels": counts.tolist() if np.ndim(counts) else None,
    }
