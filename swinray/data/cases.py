"""Cases and their ids: what a dataset holds, and the rule that each case id names one file.

A case id names the case's cache file and is what splits are made of, so two files that would share
one are both refused, naming both; an entry listed twice is kept once, with a warning.

    python -c "from swinray.data.cases import case_id_of; print(case_id_of('imagesTr/hippocampus_001.nii.gz'))"
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from swinray.config import VolumeLimits
from swinray.data.tasks import TaskSpec

NIFTI_SUFFIXES = (".nii.gz", ".nii")


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

