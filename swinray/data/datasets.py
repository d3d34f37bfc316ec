"""Dataset manifests: which cases a dataset has, where their files are, and which task it is.

Accepted sources: a folder with an MSD ``dataset.json`` (or BTCV's ``dataset_0.json`` with
``training``/``validation`` lists), a dataset file itself, or a plain folder of unlabelled NIfTI
volumes (pretraining corpora). Paths listed in a dataset file must stay inside the dataset root.

A dataset file is read entry by entry: a malformed entry is refused with its reason (in
``Dataset.rejected``) and the others go on; only a file that cannot be a dataset at all is a
``DatasetError``. Every case id names one file (``swinray.data.cases``). A task the registry does
not know is inferred from the data (``swinray.data.inference``); several folders of unlabelled
volumes make a corpus (``swinray.data.corpus``).

    python -c "from swinray.data.datasets import load_dataset; print(load_dataset('data/msd/Task04_Hippocampus').task)"
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from swinray.config import VolumeLimits
from swinray.data.cases import NIFTI_SUFFIXES, Case, Dataset, case_id_of, real_path, unique_cases
from swinray.data.inference import infer_task
from swinray.data.tasks import TASKS, TaskSpec
from swinray.errors import DatasetError, short_repr

DATASET_FILES = ("dataset.json", "dataset_0.json")
SPLITS = ("training", "validation", "test")


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


def _read_json(dataset_file: Path) -> dict:
    try:
        meta = json.loads(dataset_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{dataset_file}: cannot read the dataset file ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{dataset_file}: a dataset file is a JSON object with {', '.join(SPLITS)} lists of "
                           f"cases; this one is a JSON {type(meta).__name__}")
    return meta


def _entry_paths(raw: object, where: str) -> tuple[tuple[str, ...], str | None]:
    """(image paths, label path or None) as one dataset-file entry writes them (an object with
    ``image`` and maybe ``label``, or a bare path as MSD's test lists), or DatasetError saying why not."""
    if isinstance(raw, str):
        raw = {"image": raw}
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is {short_repr(raw)}: expected an object with an 'image' path (and a 'label'), "
                           "or a path")
    if "image" not in raw:
        raise DatasetError(f"{where} has no 'image': {short_repr(raw)}")
    images = raw["image"] if isinstance(raw["image"], list) else [raw["image"]]
    if not images or not all(isinstance(p, str) and p.strip() for p in images):
        raise DatasetError(f"{where}: 'image' must be a path or a list of paths, got {short_repr(raw['image'])}")
    label = raw.get("label")             # null: an unlabelled case, as if the key were absent
    if label is not None and not (isinstance(label, str) and label.strip()):
        raise DatasetError(f"{where}: 'label' must be a path (or null), got {short_repr(label)}")
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
            raise DatasetError(f"{dataset_file}: '{split}' must be a list of cases, got {short_repr(meta[split])}")
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


def folder_cases(folder: Path) -> list[Case]:
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
        meta, cases, rejected, root = {}, folder_cases(source), [], source
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
