"""DICOM series (CT as TCIA distributes it), one folder per series: checked from the headers,
read by MONAI's ``PydicomReader`` (RAS affine, rescale slope and intercept applied: HU for CT).

A series folder must hold one series with evenly spaced slices. What goes wrong in practice is
named with the folder: mixed series, missing or duplicated slices, uneven spacing, slices with
different orientations, a file that is not DICOM.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np

from swinray.config import VolumeLimits
from swinray.data.nifti import CaseError, Volume, check_size, check_volume

_MAGIC_AT, _MAGIC = 128, b"DICM"
_SPACING_TOLERANCE = 0.1        # slices may be 10% off the median spacing (rounding in headers)
_NOT_DICOM = (".nii", ".nii.gz", ".json", ".txt", ".npy", ".csv", ".md")


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    if path.name.lower().endswith(_NOT_DICOM):
        return False
    try:
        with path.open("rb") as f:
            return f.read(_MAGIC_AT + 4)[_MAGIC_AT:] == _MAGIC
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_dicom_file(p))


def series_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) that directly holds DICOM files."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if any(is_dicom_file(Path(directory, f)) for f in files):
            found.append(Path(directory))
    return sorted(found)


def check_series(folder: Path, limits: VolumeLimits = VolumeLimits()) -> list[Path]:
    """The series' files, or a CaseError naming the folder (or file) and what is wrong; its size is
    checked against ``limits`` from the headers, before any pixel is read."""
    import pydicom
    files = dicom_files(folder)
    if len(files) < 2:
        raise CaseError(f"{folder}: {len(files)} DICOM file(s); a volume needs a series of slices")
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as e:
            raise CaseError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    series = Counter(str(h.get("SeriesInstanceUID", "?")) for h in headers)
    if len(series) > 1:
        counts = ", ".join(f"{uid} ({n} slices)" for uid, n in series.items())
        raise CaseError(f"{folder}: {len(series)} series mixed in one folder: {counts}; put each series in a "
                        "folder of its own")
    try:
        orientation = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        position = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except AttributeError as e:
        raise CaseError(f"{folder}: slices without geometry ({e}); not an image series") from None
    rows = max(int(h.get("Rows", 0) or 0) for h in headers)
    columns = max(int(h.get("Columns", 0) or 0) for h in headers)
    bits = max(int(h.get("BitsAllocated", 16) or 16) for h in headers)
    check_size((rows, columns, len(headers)), max(1, bits // 8), folder, limits)
    if not np.allclose(orientation, orientation[0], atol=1e-4):
        raise CaseError(f"{folder}: slices with different orientations (ImageOrientationPatient); not one volume")
    normal = np.cross(orientation[0, :3], orientation[0, 3:])
    along = np.sort(position @ normal)
    gaps = np.diff(along)
    step = float(np.median(gaps))
    if step < 1e-3 or np.any(gaps < 1e-3):
        at = along[1:][gaps < 1e-3]
        raise CaseError(f"{folder}: {int(np.sum(gaps < 1e-3)) + 1} slices at the same position "
                        f"({at[0] if at.size else along[0]:.2f} mm): duplicated slices")
    for i, gap in enumerate(gaps):
        if gap > (1 + _SPACING_TOLERANCE) * step and round(gap / step) >= 2:
            raise CaseError(f"{folder}: missing slice(s): {gap:.2f} mm between the slices at {along[i]:.2f} and "
                            f"{along[i + 1]:.2f} mm, where slices are {step:.2f} mm apart "
                            f"({round(gap / step) - 1} missing)")
    uneven = np.abs(gaps - step) > _SPACING_TOLERANCE * step
    if np.any(uneven):
        raise CaseError(f"{folder}: uneven slice spacing: {gaps[uneven][0]:.2f} mm against a median of "
                        f"{step:.2f} mm")
    return files


def read_dicom_series(folder: str | Path, limits: VolumeLimits = VolumeLimits()) -> Volume:
    """A checked series as a (X, Y, Z) volume in HU with its RAS affine."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(f"{folder}: DICOM series folder not found")
    files = check_series(folder, limits)
    try:
        image = LoadImage(reader=PydicomReader(), image_only=True)(str(folder))
    except Exception as e:
        raise CaseError(f"{folder}: the DICOM series could not be read ({type(e).__name__}: {e})") from None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    array, affine = np.asarray(image.numpy()), np.asarray(image.affine.numpy(), dtype=np.float64)
    check_volume(array, affine, folder)
    return Volume(array, affine, digest.hexdigest())
