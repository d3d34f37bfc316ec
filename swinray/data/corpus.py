"""Pretraining corpora: several folders of unlabelled volumes as one dataset, one collection each.

Case ids are ``<collection>-<file>``, so files named alike in two collections stay apart; a folder
with a generic name (imagesTr) is named after its parent.

    python -c "from swinray.data.corpus import load_corpus; print(load_corpus(('data/ct-a', 'data/ct-b')).task)"
"""
from __future__ import annotations

import os
from pathlib import Path

from swinray.config import VolumeLimits
from swinray.data.cases import Case, Dataset, unique_cases
from swinray.data.datasets import folder_cases, registry_task
from swinray.data.inference import infer_task
from swinray.errors import DatasetError

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
             for folder, collection in collections for c in folder_cases(folder)]
    root = Path(os.path.commonpath(folders))
    cases, rejected, warnings = unique_cases(cases, root)
    for warning in warnings:
        log(f"warning: {warning}")
    if not cases:
        raise DatasetError(f"unlabelled corpus {', '.join(map(str, folders))}: no usable case; " + "; ".join(rejected))
    spec = registered or infer_task(name, {}, cases, root, limits, log)
    return Dataset(root, None, spec, tuple(cases), tuple(rejected), tuple(str(f) for f in folders), limits,
                   tuple(warnings))
