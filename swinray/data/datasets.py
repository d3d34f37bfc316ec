"""Dataset manifests: which cases a dataset has, where their files are, and which task it is.

Accepted sources: a folder with an MSD ``dataset.json`` (or BTCV's ``dataset_0.json`` with
``training``/``validation`` lists), a dataset file itself, or a plain folder of unlabelled NIfTI
volumes (pretraining corpora). Paths listed in a dataset file must stay inside the dataset root.

A dataset file is read entry by entry: a malformed entry is refused with its reason (in
``Dataset.rejected``) and the others go on; only a file that cannot be a dataset at all is a
``DatasetError``. Every case id names one file: two files that would share one (and so one cache
file) are both refused, naming both; an entry listed twice is kept once, with a warning.

    python -c "from swinray.data.datasets import load_dataset; print(load_dataset('data/msd/Task04_Hippocampus').task)"
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from swinray.config import VolumeLimits
from swinray.data.nifti import CaseError, ras_spacing, read_header, read_verified
from swinray.data.tasks import CT_BODY_HU, TASKS, TaskSpec, check_label_pairs
from swinray.errors import DatasetError

DATASET_FILES = ("dataset.json", "dataset_0.json")
SPLITS = ("training", "validation", "test")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SAMPLE_CASES = 8           # cases read to derive an unknown CT task's HU window
_CT_FALLBACK_WINDOW = (-175.0, 250.0)  # the reference BTCV window, for CT without labels
# Tang et al. 2022 pretrain on CT resampled to 1.5 x 1.5 x 2.0 mm with HU clipped to [-1000, 1000].
PRETRAIN_CT_SPACING_MM = (1.5, 1.5, 2.0)
PRETRAIN_CT_WINDOW_HU = (-1000.0, 1000.0)


@dataclass(frozen=True)
class Case:
    case_id: str
    image: tuple[str, ...]      # absolute paths; several files = several channels
    label: str | None           # absolute path, None for unlabelled cases
    split: str                  # training, validation or test
    collection: str = ""        # the corpus folder a pretraining case came from


@dataclass(frozen=True)
class Dataset:
    root: Path
    dataset_file: Path | None   # None for a plain folder of volumes
    task: TaskSpec
    cases: tuple[Case, ...]
    rejected: tuple[str, ...] = ()  # entries refused while reading the dataset file, with why
    sources: tuple[str, ...] = ()   # a corpus's folders (its root is only their common parent)
    limits: VolumeLimits = VolumeLimits()   # what one volume may cost, here and in preprocessing
    warnings: tuple[str, ...] = ()  # what was read but is suspect (an entry listed twice)

    def split(self, name: str) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.split == name)


def find_dataset_file(source: str | Path) -> Path | None:
    """The dataset file of a folder (or the file itself); None for a plain folder of volumes."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such dataset folder or file")
    if source.is_file():
        return source
    for name in DATASET_FILES:
        if (source / name).is_file():
            return source / name
    return None


def check_inside(root: Path, path: str, dataset_file: Path, entry: object = None) -> str:
    """Refuse a listed path that escapes the dataset root; return it normalised otherwise.

    The check is lexical (on the normalised path), so a dataset whose folders are symlinks to
    other disks still works; what it stops is an entry like ``../../etc/passwd`` or an absolute
    path elsewhere. ``entry`` is the text as written in the dataset file, for the message.
    """
    root = Path(os.path.abspath(root))
    resolved = Path(os.path.normpath(os.path.join(root, path)))
    if root not in resolved.parents:
        raise DatasetError(f"{dataset_file}: path {entry or path!r} escapes the dataset root {root}")
    return str(resolved)


def real_path(path: Path) -> str:
    """``path`` with its symlinks resolved; as it is when they loop (reading it then says so)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):     # RuntimeError: Python 3.10/3.11 on a symlink loop
        return str(path.absolute())


def case_id_of(path: str) -> str:
    """A volume's case id: its file name without .nii/.nii.gz."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_json(dataset_file: Path) -> dict:
    try:
        meta = json.loads(dataset_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{dataset_file}: cannot read the dataset file ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{dataset_file}: a dataset file is a JSON object with {', '.join(SPLITS)} lists of "
                           f"cases; this one is a JSON {type(meta).__name__}")
    return meta


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _entry_paths(raw: object, where: str) -> tuple[tuple[str, ...], str | None]:
    """(image paths, label path or None) as one dataset-file entry writes them (an object with
    ``image`` and maybe ``label``, or a bare path as MSD's test lists), or DatasetError saying why not."""
    if isinstance(raw, str):
        raw = {"image": raw}
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is {_short(raw)}: expected an object with an 'image' path (and a 'label'), "
                           "or a path")
    if "image" not in raw:
        raise DatasetError(f"{where} has no 'image': {_short(raw)}")
    images = raw["image"] if isinstance(raw["image"], list) else [raw["image"]]
    if not images or not all(isinstance(p, str) and p.strip() for p in images):
        raise DatasetError(f"{where}: 'image' must be a path or a list of paths, got {_short(raw['image'])}")
    label = raw.get("label")             # null: an unlabelled case, as if the key were absent
    if label is not None and not (isinstance(label, str) and label.strip()):
        raise DatasetError(f"{where}: 'label' must be a path (or null), got {_short(label)}")
    return tuple(images), label


def _listed_cases(dataset_file: Path, meta: dict) -> tuple[list[Case], list[str]]:
    """Every listed case, and a reason for each entry refused (one bad entry spares the rest).

    Paths are joined to the root as MONAI's ``load_decathlon_datalist`` joins them, but entry by
    entry: MONAI raises on the first entry that is not an object (and only converts a test list of
    bare paths when its first entry is one), which would cost every good entry of the file."""
    root = dataset_file.parent
    cases, rejected = [], []
    for split in SPLITS:
        if not meta.get(split):
            continue
        if not isinstance(meta[split], list):
            raise DatasetError(f"{dataset_file}: '{split}' must be a list of cases, got {_short(meta[split])}")
        for i, raw in enumerate(meta[split]):
            try:
                images, label = _entry_paths(raw, f"{dataset_file}: entry {i} of '{split}'")
                images = tuple(check_inside(root, p, dataset_file) for p in images)
                label = check_inside(root, label, dataset_file) if label else None
            except DatasetError as e:
                rejected.append(str(e))
                continue
            cases.append(Case(case_id_of(images[0]), images, label, split))
    if not cases and not rejected:
        raise DatasetError(f"{dataset_file}: lists no cases under {', '.join(SPLITS)}")
    return cases, rejected


def unique_cases(cases: list[Case], where: Path) -> tuple[list[Case], list[str], list[str]]:
    """(cases, rejections, warnings): each file in one case, each case id for one case.

    An image listed twice (with the same label, or once without one) is kept once, with its label,
    so no file is in two splits. Different files that would get one case id (``a/x.nii.gz`` and
    ``b/x.nii.gz``; ``x.nii`` beside ``x.nii.gz``; one image listed with two labels) would share one
    cache file and one split: all of them are refused, naming every path, for the user to rename."""
    kept: list[Case] = []
    at: dict[tuple[str, ...], int] = {}
    warnings = []
    for case in cases:
        i = at.get(case.image)
        if i is None or (kept[i].label and case.label and kept[i].label != case.label):
            at.setdefault(case.image, len(kept))
            kept.append(case)               # two labels for one image: refused below, by case id
            continue
        if case.label and not kept[i].label:
            kept[i], case = case, kept[i]
        splits = f"in '{kept[i].split}'" if case.split == kept[i].split else \
            f"in '{kept[i].split}' and '{case.split}'"
        warnings.append(f"{where}: {', '.join(case.image)} is listed twice ({splits}); counted once, "
                        f"in '{kept[i].split}'")
    by_id: dict[str, list[Case]] = {}
    for case in kept:
        by_id.setdefault(case.case_id, []).append(case)
    rejected = []
    for case_id, alike in by_id.items():
        if len(alike) > 1:
            files = " and ".join(", ".join(c.image) + (f" (label {c.label})" if c.label else "") for c in alike)
            rejected.append(f"{where}: {files} would share the case id {case_id!r} (one cache file, one split); "
                            "all refused: give each file a name of its own")
    return [c for c in kept if len(by_id[c.case_id]) == 1], rejected, warnings


def _folder_cases(folder: Path) -> list[Case]:
    """NIfTI volumes in the folder, and every DICOM series folder under it (one case each)."""
    from swinray.data.dicom import series_folders
    files = sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    series = series_folders(folder)
    if not files and not series:
        raise DatasetError(f"{folder}: no dataset file ({' or '.join(DATASET_FILES)}), no NIfTI volumes "
                           f"({', '.join(NIFTI_SUFFIXES)}) and no DICOM series in it")
    cases = [Case(case_id_of(str(p)), (real_path(p),), None, "training") for p in files]
    cases += [Case("_".join(s.relative_to(folder).parts) or folder.name, (real_path(s),), None, "training")
              for s in series]
    return cases


def registry_task(task: str, inferred_name: str) -> TaskSpec | None:
    """The registry's task of that name; None for ``auto`` or for ``inferred_name``, the name a task
    inferred from this data gets (what a resolved config.json holds); any other name is an error,
    before any volume is read."""
    if task in TASKS:
        return TASKS[task]
    if task not in ("auto", inferred_name):
        raise DatasetError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}, auto, or {inferred_name!r} "
                           "(this data's own settings, inferred from it)")
    return None


def load_dataset(source: str | Path, task: str = "auto", limits: VolumeLimits = VolumeLimits(), log=print) -> Dataset:
    """Read a dataset's manifest and settle its task (a registry name, or ``auto``); no volume read
    here (for task inference) may cost more than ``limits`` allow."""
    source = Path(os.path.abspath(source))
    dataset_file = find_dataset_file(source)
    if dataset_file is None:
        meta, cases, rejected, root = {}, _folder_cases(source), [], source
    else:
        meta = _read_json(dataset_file)
        (cases, rejected), root = _listed_cases(dataset_file, meta), dataset_file.parent
    cases, duplicates, warnings = unique_cases(cases, dataset_file or root)
    rejected += duplicates
    for warning in warnings:
        log(f"warning: {warning}")
    if not cases:
        raise DatasetError(f"{dataset_file or root}: no usable case; " + "; ".join(rejected))
    name = root.resolve().name
    spec = (registry_task(task, name) or TASKS.get(name)
            or infer_task(name, meta, cases, dataset_file or root, limits, log))
    return Dataset(root.resolve(), dataset_file, spec, tuple(cases), tuple(rejected), limits=limits,
                   warnings=tuple(warnings))


GENERIC_FOLDER_NAMES = {"imagesTr", "imagesTs", "images", "img", "volumes", "nifti", "data"}


def corpus_folders(entries: tuple[str, ...]) -> list[Path]:
    """The folders of a corpus: each entry a folder, or a .txt file listing one folder per line
    (relative lines are relative to that file)."""
    folders = []
    for entry in entries:
        path = Path(entry)
        if path.is_file() and path.suffix == ".txt":
            lines = [line.strip() for line in path.read_text().splitlines()]
            folders += [path.parent / line for line in lines if line and not line.startswith("#")]
        else:
            folders.append(path)
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise DatasetError(f"unlabelled corpus: no such folder(s): {', '.join(missing)}")
    if not folders:
        raise DatasetError("unlabelled corpus: no folders given")
    return [Path(os.path.abspath(f)) for f in folders]


def collection_name(folder: Path, taken: set[str]) -> str:
    """A folder's collection name: its own, or its parent's for generic names like imagesTr; unique."""
    name = folder.parent.name if folder.name in GENERIC_FOLDER_NAMES and folder.parent.name else folder.name
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    return unique


def load_corpus(entries: tuple[str, ...], task: str = "auto", limits: VolumeLimits = VolumeLimits(),
                log=print) -> Dataset:
    """Several collections of unlabelled volumes as one pretraining dataset; case ids are
    ``<collection>-<file>``, so files named alike in two collections stay apart."""
    folders, taken = corpus_folders(entries), set()
    collections = [(folder, collection_name(folder, taken)) for folder in folders]
    name = "corpus-" + "+".join(sorted(taken)) if len(taken) <= 3 else f"corpus-{len(taken)}-collections"
    registered = registry_task(task, name)
    cases = [Case(f"{collection}-{c.case_id}", c.image, None, "training", collection)
             for folder, collection in collections for c in _folder_cases(folder)]
    root = Path(os.path.commonpath(folders))
    cases, rejected, warnings = unique_cases(cases, root)
    for warning in warnings:
        log(f"warning: {warning}")
    if not cases:
        raise DatasetError(f"unlabelled corpus {', '.join(map(str, folders))}: no usable case; " + "; ".join(rejected))
    spec = registered or infer_task(name, {}, cases, root, limits, log)
    return Dataset(root, None, spec, tuple(cases), tuple(rejected), tuple(str(f) for f in folders), limits,
                   tuple(warnings))


# --------------------------------------------------------------------------------------------
# Settings for a dataset the registry does not know, derived from dataset.json and the data
# --------------------------------------------------------------------------------------------

def _label_names(meta: dict, where: Path) -> tuple[str, ...]:
    labels = meta.get("labels") or {"0": "background", "1": "foreground"}
    try:
        # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}.
        pairs = ([(int(k), str(v)) for k, v in labels.items()] if all(str(k).isdigit() for k in labels)
                 else [(int(v), str(k)) for k, v in labels.items()])
    except (AttributeError, TypeError, ValueError):
        raise DatasetError(f"{where}: 'labels' must map label values to names, e.g. "
                           f'{{"0": "background", "1": "tumour"}}; got {_short(labels)}') from None
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
                           f'{{"0": "CT"}} or {{"0": "T2", "1": "ADC"}}; got {_short(modality)}')
    return tuple(modality[k] for k in sorted(modality, key=int))


def _skipped(case: Case, error: Exception, log) -> None:
    """Task inference names a volume it cannot use and goes on; preprocessing will reject it."""
    reason = str(error) if isinstance(error, CaseError) else f"{case.image[0]}: {type(error).__name__}: {error}"
    log(f"task inference: skipped {reason}")


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
    """Target spacing = median voxel size; ROI from the median extent; CT window from the labels.

    Unlabelled CT (a pretraining corpus) gets the paper's pretraining settings instead. Volumes that
    cannot be read within ``limits`` are named and skipped; the next readable ones are used.
    """
    channels = _channel_names(meta, where) or ("CT" if _looks_like_ct(cases, where, limits, log) else "MRI",)
    is_ct = all(m.upper() == "CT" for m in channels)
    if is_ct and not any(c.label for c in cases):
        return TaskSpec(name, "CT", channels, ("background",), PRETRAIN_CT_SPACING_MM, "ct_window",
                        PRETRAIN_CT_WINDOW_HU, (96, 96, 96), where.name if where.is_file() else "")
    label_names = _label_names(meta, where)
    sample, geometry = [], []
    for case in sorted(cases, key=lambda c: c.split != "training"):
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
    spacing = np.median([g[0] for g in geometry], axis=0)
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
