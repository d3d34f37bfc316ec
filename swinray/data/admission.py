"""Admission relative to the dataset: a case may cost at most ``max_times_median`` times what the
dataset's median case costs, judged from the headers before any worker starts.

The absolute ``VolumeLimits`` bound one volume whatever it comes with, so they must let a whole-body
CT through. Among 64^3 cases, a 500 KB ``.nii.gz`` of zeros that honestly claims 600 x 600 x 700
int16 voxels passes them and makes its worker use gigabytes for voxels where the others need a few
MB. Headers are cheap (348 bytes each, read and checked here as in the workers), so the driver
estimates every case's cost from them (``case_claim``: each file's voxels as decompressed and as
loaded, plus their resampling to the task spacing in float32, the largest arrays a worker holds for
it) and refuses a case above ``max_times_median`` times the median one, unless it is below
``relative_floor_mb``. Workers then see admitted cases only, so a run's peak memory follows its
typical case, not its largest claim. The decision depends on the other cases, so it is made afresh
on every run and never remembered with the case. A corpus of several collections (``--unlabelled A B``)
has one median per collection. Task inference, which reads a few volumes on the driver before the
task spacing is known, samples only cases admitted by the same rule with ``spacing_mm=None``: their
cost as read there (decompressed and loaded, not resampled).

Why the median: it stays with the typical case while fewer than half the cases are outsized (a
dataset that is mostly huge volumes is bounded by the absolute limits alone), where one huge claim
moves a mean. Real spreads fit in 16x with room: the largest case is 1.4x the median in MSD
Hippocampus, 1.6x in OpenKBP's organs at risk, 1.9x in its 203-CT corpus; MSD Liver's CTs span 13x
in slice count from smallest to largest, so less from the median. The floor keeps a dataset of tiny
volumes (a Hippocampus case: 1 MB) from refusing an ordinary scan. A case whose headers cannot be
read, or break an absolute limit, is admitted unmeasured: its worker refuses it with that reason.

    python -c "from swinray.data.datasets import load_dataset; from swinray.data.admission import admit; \\
d = load_dataset('data/msd/Task04_Hippocampus'); print(admit(d.cases, d.task.spacing_mm, d.limits).median_mb)"
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from swinray.config import VolumeLimits
from swinray.data.cases import Case
from swinray.data.nifti import CaseError, loaded_itemsize, read_header

_MB = 2 ** 20
_FLOAT32 = 4          # bytes: MONAI resamples in float32, and scaled or DICOM voxels load as float32


@dataclass(frozen=True)
class Claim:
    """What a file's header says it will cost."""
    path: str
    shape: tuple[int, ...]
    dtype: str                  # as stored
    mb: float                   # to decompress, load and resample


@dataclass(frozen=True)
class Admission:
    admitted: list[Case]
    refused: list[tuple[Case, str]]     # with the reason, naming the file, its cost and the median's
    median_mb: float | None             # the median measured case; None when none could be measured


def _cost_mb(voxels: int, stored: int, loaded: int, voxel_mm3: float, spacing_mm) -> float:
    resampled = 0.0 if spacing_mm is None else voxels * voxel_mm3 / math.prod(float(s) for s in spacing_mm)
    return (voxels * (stored + loaded) + resampled * _FLOAT32) / _MB


def _voxel_mm3(affine: np.ndarray) -> float:
    return float(np.prod(np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))))


def file_claim(path: str, spacing_mm, limits: VolumeLimits = VolumeLimits()) -> Claim:
    """A NIfTI file's or DICOM series folder's claim, from its header(s) alone; CaseError when they
    cannot be read or break the absolute limits (its resampling's included). ``spacing_mm`` None:
    the cost of reading it, not resampled."""
    if Path(path).is_dir():
        return _series_claim(Path(path), spacing_mm)
    header = read_header(path, limits, spacing_mm)
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = header.get_data_dtype()
    mb = _cost_mb(math.prod(shape), dtype.itemsize, loaded_itemsize(header), _voxel_mm3(header.get_best_affine()),
                  spacing_mm)
    return Claim(path, shape, str(dtype), mb)


def _series_claim(folder: Path, spacing_mm) -> Claim:
    """A DICOM series from its first slice's header and its number of slices; voxels load as float32.
    The absolute limits are the reader's to check here (``dicom.py``), so a series over them is
    measured and admitted, then refused by its worker with that reason."""
    import pydicom

    from swinray.data.dicom import dicom_files
    files = dicom_files(folder)
    if not files:
        raise CaseError(f"{folder}: no DICOM file")
    try:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        shape = (int(first.Columns), int(first.Rows), len(files))
        stored = max(1, int(first.get("BitsAllocated", 16) or 16) // 8)
        row_mm, column_mm = (float(v) for v in first.get("PixelSpacing", (1.0, 1.0)))
        slice_mm = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    except Exception as e:          # pydicom raises many types for malformed headers
        raise CaseError(f"{files[0]}: not a readable DICOM header ({type(e).__name__}: {e})") from None
    mb = _cost_mb(math.prod(shape), stored, _FLOAT32, row_mm * column_mm * slice_mm, spacing_mm)
    return Claim(str(folder), shape, f"{8 * stored}-bit DICOM", mb)


def case_claim(case: Case, spacing_mm, limits: VolumeLimits = VolumeLimits()) -> tuple[Claim, float]:
    """(the case's largest file's claim, the MB of all its files together)."""
    claims = [file_claim(p, spacing_mm, limits) for p in (*case.image, *([case.label] if case.label else []))]
    return max(claims, key=lambda c: c.mb), sum(c.mb for c in claims)


def admit(cases: Sequence[Case], spacing_mm, limits: VolumeLimits = VolumeLimits()) -> Admission:
    """Split ``cases`` into those admitted and those refused as outsized against their median: the
    median of their own collection (a pretraining corpus of 128^3 head-and-neck CTs and 512^2 x 200
    abdominal ones is two typical sizes, not one), of all cases when they come from one source."""
    measured = {}                       # by position: a case id is not unique among predict's inputs
    for i, case in enumerate(cases):
        try:
            measured[i] = case_claim(case, spacing_mm, limits)
        except Exception:   # unreadable or over an absolute limit: its worker says why
            continue
    if not measured:
        return Admission(list(cases), [], None)
    by_collection: dict[str, list[float]] = {}
    for i, (_, mb) in measured.items():
        by_collection.setdefault(cases[i].collection, []).append(mb)
    medians = {name: float(np.median(mbs)) for name, mbs in by_collection.items()}
    admitted, refused = [], []
    for i, case in enumerate(cases):
        largest, mb = measured.get(i, (None, 0.0))
        median, among = medians.get(case.collection, 0.0), len(by_collection.get(case.collection, ()))
        if mb <= max(limits.max_times_median * median, limits.relative_floor_mb):
            admitted.append(case)
            continue
        whole = "" if len(case.image) == 1 and not case.label else " with the rest of its case"
        of = f"of {case.collection}'s {among}" if len(medians) > 1 else f"of these {among}"
        work = "to load" if spacing_mm is None else "to load and resample"
        refused.append((case, f"{largest.path}: its header claims {largest.shape} voxels of {largest.dtype}, "
                              f"{mb:.1f} MB {work}{whole}, {mb / median:.0f}x the median case "
                              f"{of} ({median:.2f} MB); above the limit max_times_median="
                              f"{limits.max_times_median:g} (cases under relative_floor_mb="
                              f"{limits.relative_floor_mb:g} are always admitted): raise it if such sizes "
                              "belong with these cases"))
    overall = float(np.median([mb for _, mb in measured.values()]))
    return Admission(admitted, refused, round(overall, 3))
