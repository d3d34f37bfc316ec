"""Reading NIfTI volumes we can trust: bounded by their header, whole gzip stream checked, geometry
and voxels validated.

nibabel checks almost nothing: a truncated ``.nii.gz`` loads and fails only when read (or, with
the gzip trailer cut, silently returns wrong data), and flipped bits come back as wrong voxels
unless the gzip stream is read to its end and its CRC verified. It also allocates whatever the
header claims, and a gzip stream expands to whatever it holds. So we read the header first and
refuse one that claims more than ``VolumeLimits`` allow (or whose resampling to the task spacing
would), decompress at most what the header claims, let Python's gzip verify CRC and length, parse
the bytes with nibabel, then check the voxels. Voxels that the header scales (``scl_slope`` and
``scl_inter``, as CTs stored as unsigned integers with an intercept of -1024 are) are loaded as
float32, where nibabel would return float64 (and, asked for float32, go through float64 anyway):
the size checks count the voxels as loaded, not as stored.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from swinray.config import VolumeLimits

MIN_SPACING_MM = 1e-3   # 1 micrometre: finer than any scanner, so a smaller pixdim is a broken header
SMALL_MEGAVOXELS = 16.0  # about a CT at the paper's 1.5 x 1.5 x 2 mm: a result this small is never refused for growth
_MB = 2 ** 20
_GZIP_MAGIC = b"\x1f\x8b"


class CaseError(ValueError):
    """One case is unusable; the message names the file and the problem."""


class CaseReadError(CaseError):
    """The file could not be read (permissions, a flaky mount): a fault of the place, not of the data,
    so the rejection is not remembered and a rerun tries again."""


@dataclass(frozen=True)
class Volume:
    array: np.ndarray           # (X, Y, Z) or (X, Y, Z, C), as stored
    affine: np.ndarray          # 4x4 voxel -> world (RAS+ mm)
    sha256: str                 # of the file as stored on disk


def check_size(shape, itemsize: int, path, limits: VolumeLimits, extra_bytes: int = 0, loaded_as: str = "") -> None:
    """Refuse a volume whose voxel count or data size is above the limits, before it is allocated.
    ``itemsize``: bytes per voxel as loaded; ``loaded_as`` names that type when it is not the stored one."""
    voxels = math.prod(int(s) for s in shape)
    if voxels > limits.max_megavoxels * 1e6:
        raise CaseError(f"{path}: its header claims {tuple(int(s) for s in shape)} = {voxels / 1e6:.1f} megavoxels, "
                        f"above the limit max_megavoxels={limits.max_megavoxels:g}")
    claimed = voxels * itemsize + extra_bytes
    if claimed > limits.max_volume_mb * _MB:
        raise CaseError(f"{path}: its header claims {claimed / _MB:.1f} MB of voxel data{loaded_as}, above the limit "
                        f"max_volume_mb={limits.max_volume_mb:g}")


def is_scaled(header: nib.Nifti1Header) -> bool:
    """Whether the header's scl_slope/scl_inter change the stored values (nibabel reads 0 or NaN as none)."""
    slope, inter = header.get_slope_inter()
    return (slope is not None and slope != 1) or (inter is not None and inter != 0)


def loaded_itemsize(header: nib.Nifti1Header) -> int:
    """Bytes per voxel once loaded by ``read_verified``: float32 when scaled (the stored size if larger,
    which the decompressed data holds meanwhile), else the stored type."""
    stored = header.get_data_dtype().itemsize
    return max(stored, 4) if is_scaled(header) else stored


def check_geometry(affine: np.ndarray, path) -> None:
    """A finite, non-singular voxel-to-world matrix with plausible voxel sizes, or CaseError."""
    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(affine)) or np.any(zooms == 0) or \
            abs(np.linalg.det(affine[:3, :3] / zooms)) < 1e-6:
        raise CaseError(f"{path}: degenerate affine (voxel-to-world matrix is singular or "
                        f"non-finite): {np.round(affine[:3, :3], 4).tolist()}")
    if np.any(zooms < MIN_SPACING_MM):
        raise CaseError(f"{path}: voxel spacing {' x '.join(f'{z:.3g}' for z in zooms)} mm is below "
                        f"{MIN_SPACING_MM} mm, finer than any scanner: the header's pixdim (or sform) is wrong")


def check_resampling(shape, affine: np.ndarray, spacing_mm, path, limits: VolumeLimits) -> None:
    """Refuse a volume whose resampling to ``spacing_mm`` would be too large (or empty), before it is
    done: above ``max_megavoxels``, or grown more than ``max_resample_growth`` times into more than
    ``SMALL_MEGAVOXELS`` (a header claiming 12 mm voxels for a CT task at 1.5 mm). The bound uses the
    whole volume: the foreground crop can only make it smaller."""
    order = np.argsort(nib.orientations.io_orientation(affine)[:, 0].astype(int))
    extent = np.asarray([int(s) for s in shape[:3]], dtype=float)[order] * np.asarray(ras_spacing(affine))
    target = extent / np.asarray(spacing_mm, dtype=float)
    channels = math.prod(int(s) for s in shape[3:])
    source = math.prod(int(s) for s in shape[:3])
    grown = float(np.prod(target)) * channels
    how = (f"resampling {' x '.join(f'{s:g}' for s in ras_spacing(affine))} mm voxels to the task's "
           f"{' x '.join(f'{s:g}' for s in spacing_mm)} mm")
    if np.any(target < 1):
        raise CaseError(f"{path}: {how} leaves less than one voxel along an axis (extent "
                        f"{np.round(extent, 4).tolist()} mm): the header's spacing is wrong")
    too_grown = grown > limits.max_resample_growth * source * channels and grown > SMALL_MEGAVOXELS * 1e6
    if grown > limits.max_megavoxels * 1e6 or too_grown:
        raise CaseError(f"{path}: {how} would make {np.round(target).astype(int).tolist()} = {grown / 1e6:.1f} "
                        f"megavoxels ({grown / (source * channels):.0f}x the source), above the limits "
                        f"max_megavoxels={limits.max_megavoxels:g} and max_resample_growth="
                        f"{limits.max_resample_growth:g}: the header's spacing is likely wrong")


def _header_bytes(path: Path) -> bytes:
    """The first 348 bytes (the NIfTI-1 header), decompressed if gzipped; nothing more is read."""
    with path.open("rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        if not gzipped:
            return f.read(348)
        with gzip.GzipFile(fileobj=f) as stream:
            return stream.read(348)


def read_header(path: str | Path, limits: VolumeLimits = VolumeLimits(), spacing_mm=None) -> nib.Nifti1Header:
    """The checked header of a .nii or .nii.gz: size within ``limits``, usable geometry and, with
    ``spacing_mm``, a resampling within ``limits``. Only the header is read; CaseError otherwise."""
    path = Path(path)
    try:
        head = _header_bytes(path)
    except FileNotFoundError:
        raise CaseError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise CaseError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    except OSError as e:
        raise CaseReadError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(head))
        shape, dtype = header.get_data_shape(), header.get_data_dtype()
        affine = header.get_best_affine()
        scaled = is_scaled(header)      # a finite slope with a non-finite intercept raises
    except Exception as e:  # nibabel raises many types for malformed headers
        raise CaseError(f"{path}: not a readable NIfTI-1 volume ({type(e).__name__}: {e})") from None
    if 0 in shape:
        raise CaseError(f"{path}: zero-size volume {shape}")
    if dtype.kind not in "iuf":
        raise CaseError(f"{path}: voxels of type {dtype} (complex or RGB); an image or label holds real numbers")
    check_size(shape, loaded_itemsize(header), path, limits, int(header.get_data_offset()),
               f" as loaded (float32, scaled by its scl_slope/scl_inter from {dtype})" if scaled else "")
    check_geometry(affine, path)
    if spacing_mm is not None:
        check_resampling(shape, affine, spacing_mm, path, limits)
    return header


def _bounded_read(path: Path, raw: bytes, expected: int) -> bytes:
    """The decompressed file, never more than ``expected`` bytes (the header's claim) plus one: a
    stream that holds more is refused before the rest is decompressed (a gzip bomb)."""
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(expected)
            if stream.read(1):
                raise CaseError(f"{path}: the gzip stream holds more than the {expected} bytes its header "
                                "claims (a decompression bomb, or not one volume); refused unread")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:   # CRC32 and length in the gzip trailer
        raise CaseError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    return data


def read_verified(path: str | Path, limits: VolumeLimits = VolumeLimits(), spacing_mm=None) -> Volume:
    """Load a .nii or .nii.gz fully (or a DICOM series folder) within ``limits``, or raise CaseError
    saying what is wrong with the file. With ``spacing_mm``, a resampling to it is checked too."""
    path = Path(path)
    if path.is_dir():
        from swinray.data.dicom import read_dicom_series
        volume = read_dicom_series(path, limits)
        if spacing_mm is not None:
            check_resampling(volume.array.shape, volume.affine, spacing_mm, path, limits)
        return volume
    header = read_header(path, limits, spacing_mm)
    expected = int(header.get_data_offset()) + math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
    # gzip's worst case (incompressible data, stored blocks) adds about 0.03%, plus its own header
    if os.path.getsize(path) > expected + expected // 1000 + 1024:
        raise CaseError(f"{path}: {os.path.getsize(path)} bytes on disk for the {expected} its header claims; "
                        "not one NIfTI volume")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CaseReadError(f"{path}: cannot read ({e.strerror})") from None
    data = _bounded_read(path, raw, expected)
    try:
        image = nib.Nifti1Image.from_bytes(data)
        array = _as_loaded(image.dataobj)
    except Exception as e:  # nibabel raises many types for malformed headers and short data
        raise CaseError(f"{path}: not a readable NIfTI-1 volume ({type(e).__name__}: {e})") from None
    check_volume(array, image.affine, path)
    return Volume(array, image.affine, hashlib.sha256(raw).hexdigest())


def _as_loaded(proxy) -> np.ndarray:
    """The voxels as stored, or scaled by the header's slope and intercept in float32, in place: the
    stored array plus one float32 array, where nibabel's scaling makes float64 (twice the memory,
    four times that of int16 voxels). A scaling that overflows float32 leaves non-finite voxels,
    which ``check_volume`` refuses."""
    raw = np.asarray(proxy.get_unscaled())
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope == 1 and inter == 0:
        return raw
    array = raw.astype(np.float32)
    del raw
    with np.errstate(over="ignore", invalid="ignore"):
        array *= np.float32(slope)
        array += np.float32(inter)
    return array


def check_volume(array: np.ndarray, affine: np.ndarray, path) -> None:
    """A usable voxel-to-world matrix and finite voxels, or CaseError."""
    check_geometry(affine, path)
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
