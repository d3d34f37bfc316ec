"""Task inference: the settings of a dataset the registry does not know, from its dataset file and data.

Target spacing = the median voxel size of every case (from NIfTI headers alone, as nnU-Net's
fingerprint takes it, each axis a size some case has); ROI from a few cases' median extent (for CT, their
body's); the CT window from the HU inside their labels; unlabelled CT (a pretraining corpus) gets
the paper's pretraining settings. Every volume is read within ``VolumeLimits``; one that cannot be
is named and skipped, and the next readable one is used. Only cases admitted against the median
case (``swinray.data.admission``) are read, so the driver's memory here follows the typical case.

    python -c "from swinray.data.datasets import load_dataset; print(load_dataset('path/to/MyTask').task)"
"""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from swinray.config import VolumeLimits
from swinray.data.admission import admit
from swinray.data.cases import Case
from swinray.data.nifti import CaseError, ras_spacing, read_header, read_verified
from swinray.data.tasks import CT_BODY_HU, TaskSpec, check_label_pairs
from swinray.errors import DatasetError, short_repr

_SAMPLE_CASES = 8           # cases read to derive an unknown CT task's HU window
_CT_FALLBACK_WINDOW = (-175.0, 250.0)  # the reference BTCV window, for CT without labels
# Tang et al. 2022 pretrain on CT resampled to 1.5 x 1.5 x 2.0 mm with HU clipped to [-1000, 1000].
PRETRAIN_CT_SPACING_MM = (1.5, 1.5, 2.0)
PRETRAIN_CT_WINDOW_HU = (-1000.0, 1000.0)


def _label_names(meta: dict, where: Path) -> tuple[str, ...]:
    labels = meta.get("labels") or {"0": "background", "1": "foreground"}
    try:
        # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}.
        pairs = ([(int(k), str(v)) for k, v in labels.items()] if all(str(k).isdigit() for k in labels)
                 else [(int(v), str(k)) for k, v in labels.items()])
    except (AttributeError, TypeError, ValueError):
        raise DatasetError(f"{where}: 'labels' must map label values to names, e.g. "
                           f'{{"0": "background", "1": "tumour"}}; got {short_repr(labels)}') from None
    values = sorted(v for v, _ in pairs)
    if values != list(range(len(values))):
        raise DatasetError(f"{where}: label values must be 0..N-1 without gaps, got {values}")
    return tuple(name for _, name in sorted(pairs))


def _channel_names(meta: dict, where: Path) -> tuple[str, ...] | None:
    """The channels ``modality`` names in order, or None when the dataset file gives none."""
    modality = meta.get("modality")
    if not modality:
        return None
    if not (isinstance(modality, dict) and all(str(k).isdigit() and isinstance(v, str) for k, v in modality.items())):
        raise DatasetError(f"{where}: 'modality' must map channel numbers to names, e.g. "
                           f'{{"0": "CT"}} or {{"0": "T2", "1": "ADC"}}; got {short_repr(modality)}')
    return tuple(modality[k] for k in sorted(modality, key=int))


def _skipped(case: Case, error: Exception, log) -> None:
    """Task inference names a volume it cannot use and goes on; preprocessing will reject it."""
    reason = str(error) if isinstance(error, CaseError) else f"{case.image[0]}: {type(error).__name__}: {error}"
    log(f"task inference: skipped {reason}")


def _typical_cases(cases: list[Case], limits: VolumeLimits, log) -> list[Case]:
    """The cases preprocessing's relative check admits, costed as read here (whole, not resampled):
    a volume just under the absolute limits among small ones would cost the driver gigabytes."""
    admission = admit(cases, None, limits)
    for _, reason in admission.refused:
        log(f"task inference: skipped {reason}")
    return admission.admitted


def _median_spacing(cases: list[Case], sampled: dict[str, np.ndarray], limits: VolumeLimits, log) -> np.ndarray:
    """The median voxel size over every case, each axis taken as a size some case has (for an even
    count, the finer of the middle two): from each NIfTI header alone, or, for a DICOM folder (read
    whole), when it was sampled. The median of the 8 sampled cases of OpenKBP_HN_OAR averaged 3.92
    and 4.188 into 4.054 mm, which no case has, so every case was resampled; over all 115 it is
    3.906 mm, the voxel of 41 of them. A round trip to 4.054 mm keeps the spinal cord's Dice at 0.964."""
    spacings, unread = [], 0
    for case in cases:
        path = case.image[0]
        if path in sampled:
            spacings.append(sampled[path])
        elif Path(path).is_dir():
            unread += 1
        else:
            try:
                spacings.append(_ras_geometry(path, limits)[0])
            except Exception:   # preprocessing refuses it, naming the file and the problem
                unread += 1
    if unread:
        log(f"task inference: voxel size from {len(spacings)} of {len(cases)} cases ({unread} DICOM folder(s) "
            "not sampled or header(s) that could not be read)")
    return np.percentile(np.asarray(spacings), 50, axis=0, method="lower")


def _ras_geometry(path: str, limits: VolumeLimits) -> tuple[np.ndarray, np.ndarray]:
    """Voxel size and shape along R, A, S: for NIfTI from the checked header alone."""
    if Path(path).is_dir():
        volume = read_verified(path, limits)
        affine, shape = volume.affine, volume.array.shape
    else:
        header = read_header(path, limits)
        affine, shape = header.get_best_affine(), header.get_data_shape()
    order = np.argsort(nib.orientations.io_orientation(affine)[:, 0].astype(int))
    return np.asarray(ras_spacing(affine)), np.asarray(shape[:3], dtype=float)[order]


def _ceil_roi(extent_vox: float) -> int:
    """Smallest valid ROI side for a typical extent: 64 or 96 (multiples of 32, at least 64)."""
    return int(min(96, max(64, 32 * math.ceil(extent_vox / 32))))


def infer_task(name: str, meta: dict, cases: list[Case], where: Path, limits: VolumeLimits = VolumeLimits(),
               log=print) -> TaskSpec:
    """Target spacing = every case's median voxel size; ROI from the median extent; CT window from the labels.

    Unlabelled CT (a pretraining corpus) gets the paper's pretraining settings instead. Only typical
    cases are read; volumes that cannot be read within ``limits`` are named and skipped; the next
    readable ones are used.
    """
    channels, labelled = _channel_names(meta, where), any(c.label for c in cases)
    ct_named = bool(channels) and all(m.upper() == "CT" for m in channels)
    # Unlabelled CT by its dataset file's name needs no volume read; anything else reads typical cases only.
    typical = [] if ct_named and not labelled else _typical_cases(cases, limits, log)
    channels = channels or ("CT" if _looks_like_ct(typical, where, limits, log) else "MRI",)
    is_ct = all(m.upper() == "CT" for m in channels)
    if is_ct and not labelled:
        return TaskSpec(name, "CT", channels, ("background",), PRETRAIN_CT_SPACING_MM, "ct_window",
                        PRETRAIN_CT_WINDOW_HU, (96, 96, 96), where.name if where.is_file() else "")
    label_names = _label_names(meta, where)
    sample, geometry = [], []
    for case in sorted(typical, key=lambda c: c.split != "training"):
        try:
            geometry.append(_ras_geometry(case.image[0], limits))
            sample.append(case)
        except Exception as e:  # one bad volume never stops a run
            _skipped(case, e, log)
            continue
        if len(sample) == _SAMPLE_CASES:
            break
    if not sample:
        raise DatasetError(f"{where}: none of the cases can be read to derive the task settings")
    spacing = _median_spacing(cases, {c.image[0]: g[0] for c, g in zip(sample, geometry)}, limits, log)
    extent_mm = [g[0] * g[1] for g in geometry]
    window = None
    if is_ct:
        window, body_mm = _foreground_window(sample, limits, log)
        extent_mm = body_mm or extent_mm     # the body, not the air around it, sets a CT's ROI
    try:
        pairs = check_label_pairs(meta["label_pairs"], label_names) if "label_pairs" in meta else None
        return TaskSpec(
            name=name, modality="CT" if is_ct else "MRI", channel_names=channels,
            label_names=label_names,
            spacing_mm=tuple(round(float(s), 3) for s in spacing),
            intensity="ct_window" if is_ct else "zscore_nonzero", window_hu=window,
            roi_size=tuple(_ceil_roi(e) for e in np.median(extent_mm, axis=0) / spacing),
            dataset_file=where.name if where.is_file() else "dataset.json",
            label_pairs=pairs,
        )
    except ValueError as e:             # label pairs the names or the file make ambiguous
        raise DatasetError(f"{where}: {str(e).removeprefix(f'task {name}: ')}") from None


def _looks_like_ct(cases: list[Case], where: Path, limits: VolumeLimits, log) -> bool:
    """Hounsfield units put air near -1000; MRI intensities are not negative. The first readable
    volume decides."""
    for case in cases:
        try:
            return float(np.min(read_verified(case.image[0], limits).array)) <= -500
        except Exception as e:  # one bad volume never stops a run
            _skipped(case, e, log)
    raise DatasetError(f"{where}: none of its {len(cases)} volume(s) can be read to tell CT from MRI "
                       "(each is named above)")


def _foreground_window(sample: list[Case], limits: VolumeLimits, log) -> tuple[tuple[float, float], list]:
    """nnU-Net's CT normalisation: the 0.5 and 99.5 percentiles of HU inside the labels; and the
    extent of each case's body (HU above ``CT_BODY_HU``) in mm along R, A, S, which preprocessing crops to."""
    values, body_mm = [], []
    for case in (c for c in sample if c.label):
        try:
            volume = read_verified(case.image[0], limits)
            image = volume.array
            label = read_verified(case.label, limits).array
            if image.shape == label.shape:
                values.append(np.asarray(image[label > 0][::10], dtype=np.float64))
        except Exception as e:  # one bad volume (or an odd voxel type) never stops a run
            _skipped(case, e, log)
            continue
        body = image > CT_BODY_HU
        if body.ndim == 3 and body.any():
            voxels = [np.ptp(np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))) + 1
                      for axis in range(3)]
            order = np.argsort(nib.orientations.io_orientation(volume.affine)[:, 0].astype(int))
            body_mm.append(np.asarray(voxels, float)[order] * np.asarray(ras_spacing(volume.affine)))
    values = np.concatenate(values) if values else np.empty(0)
    if values.size < 100:
        return _CT_FALLBACK_WINDOW, body_mm
    low, high = (float(round(v)) for v in np.percentile(values, [0.5, 99.5]))
    if high - low < 1:                    # labels of one HU value: no window to scale by
        return _CT_FALLBACK_WINDOW, body_mm
    return (low, high), body_mm
