"""Reading NIfTI volumes we can trust: whole gzip stream checked, geometry and voxels validated.

nibabel checks almost nothing: a truncated ``.nii.gz`` loads and fails only when read (or, with
the gzip trailer cut, silently returns wrong data), and flipped bits come back as wrong voxels
unless the gzip stream is read to its end and its CRC verified. So we read the whole file,
let Python's gzip verify CRC and length, parse the bytes with nibabel, then check the voxels.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


class CaseError(ValueError):
    """One case is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Volume:
    array: np.ndarray           # (X, Y, Z) or (X, Y, Z, C), as stored
    affine: np.ndarray          # 4x4 voxel -> world (RAS+ mm)
    sha256: str                 # of the file as stored on disk


def read_verified(path: str | Path) -> Volume:
    """Load a .nii or .nii.gz fully (or a DICOM series folder), or raise CaseError saying what is
    wrong with the file."""
    path = Path(path)
    if path.is_dir():
        from swinray.data.dicom import read_dicom_series
        return read_dicom_series(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CaseError(f"{path}: file not found") from None
    except OSError as e:
        raise CaseError(f"{path}: cannot read ({e.strerror})") from None
    data = raw
    if raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)     # verifies the CRC32 and length in the gzip trailer
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise CaseError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    try:
        image = nib.Nifti1Image.from_bytes(data)
        if 0 in image.shape:
            raise CaseError(f"{path}: zero-size volume {image.shape}")
        array = np.asarray(image.dataobj)
    except CaseError:
        raise
    except Exception as e:  # nibabel raises many types for malformed headers and short data
        raise CaseError(f"{path}: not a readable NIfTI-1 volume ({type(e).__name__}: {e})") from None
    check_volume(array, image.affine, path)
    return Volume(array, image.affine, hashlib.sha256(raw).hexdigest())


def check_volume(array: np.ndarray, affine: np.ndarray, path) -> None:
    """A usable voxel-to-world matrix and finite voxels, or CaseError."""
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise CaseError(f"{path}: degenerate affine (voxel-to-world matrix is singular or "
                        f"non-finite): {np.round(affine[:3, :3], 4).tolist()}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise CaseError(f"{path}: {bad} non-finite voxel(s) (NaN or inf)")


def check_channels(volume: Volume, path: str, expected: int) -> np.ndarray:
    """The array as (C, X, Y, Z), or CaseError when its dimensions do not fit the task."""
    array = volume.array
    if array.ndim == 3:
        array = array[None]
    elif array.ndim == 4:
        array = np.moveaxis(array, -1, 0)   # NIfTI stores channels last
    else:
        raise CaseError(f"{path}: {array.ndim}-D image; expected 3-D, or 4-D with channels last")
    if array.shape[0] != expected:
        raise CaseError(f"{path}: {array.shape[0]} channel(s), the task expects {expected} "
                        f"({'3-D' if expected == 1 else f'4-D with {expected} channels'})")
    return array


def check_label(label: Volume, path: str, image: Volume, image_path: str, num_classes: int) -> np.ndarray:
    """The label as integer (X, Y, Z), or CaseError when it does not match its image or task."""
    if label.array.ndim != 3:
        raise CaseError(f"{path}: label must be 3-D, got shape {label.array.shape}")
    if label.array.shape != image.array.shape[:3]:
        raise CaseError(f"{path}: label shape {label.array.shape} differs from image "
                        f"{image_path} shape {image.array.shape[:3]}")
    if not np.allclose(label.affine, image.affine, atol=1e-3):
        raise CaseError(f"{path}: label affine differs from image {image_path} "
                        f"(max difference {np.abs(label.affine - image.affine).max():.4g} mm)")
    values = np.unique(label.array)
    allowed = np.arange(num_classes)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        raise CaseError(f"{path}: label values {bad[:10].tolist()} are not in the task's "
                        f"label set 0..{num_classes - 1}")
    return label.array.astype(np.uint8)


def ras_spacing(affine: np.ndarray) -> list[float]:
    """Voxel size in mm along R, A, S, whatever order the axes are stored in."""
    axes = nib.orientations.io_orientation(affine)[:, 0].astype(int)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return [round(float(zooms[list(axes).index(i)]), 4) for i in range(3)]
