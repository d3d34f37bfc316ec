"""Task registry: BTCV and the ten Medical Segmentation Decathlon tasks.

Each entry says how a task's data is read and normalised: modality and channels, label names
(index = label value), target spacing, intensity handling and the training ROI. A folder with an
MSD-format ``dataset.json`` that is not listed here is still a valid task: see
``swinray.data.inference.infer_task``.

    python -c "from swinray.data.tasks import get_task; print(get_task('Task09_Spleen'))"
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

IntensityKind = Literal["ct_window", "zscore_nonzero"]
CT_BODY_HU = -500.0  # between air (-1000) and fat (-100): the body, not just what the window shows
LabelPairs = tuple[tuple[int, int], ...]

# A side word at the start or the end of a label name: LeftParotid, left_kidney, "right lung",
# Parotid_L, kidney-right. What remains (lower case, separators dropped) names the organ.
_SEP = r"[\s_\-]+"
_SIDE_FIRST = re.compile(rf"^(?:(?P<word>(?i:left|right))(?:{_SEP}|(?=[A-Z]))|(?P<letter>[LlRr]){_SEP})(?P<organ>.+)$")
_SIDE_LAST = re.compile(rf"^(?P<organ>.+?)(?:{_SEP}(?P<word>(?i:left|right|l|r))|(?<=[a-z])(?P<camel>Left|Right))$")


def _side_and_organ(name: str) -> tuple[str, str] | None:
    """("l" or "r", organ) of a label name with a side word; camel case only with capitals."""
    for pattern in (_SIDE_FIRST, _SIDE_LAST):
        match = pattern.match(name.strip())
        if match:
            side = next(g for k, g in match.groupdict().items() if k != "organ" and g)
            return side[0].lower(), re.sub(_SEP, "", match["organ"]).lower()
    return None


# Structures named left and right that are not mirror images of each other: a flipped left ventricle
# is still a left ventricle, so these never swap (a dataset file can still pair them explicitly).
NOT_MIRRORED = ("atrium", "ventricle", "lobe")


def left_right_pairs(label_names: tuple[str, ...]) -> LabelPairs:
    """(left, right) label values whose names differ only by their side word.

    A left-right flip moves a right organ to where the left one lies, so these labels must swap with
    it. Single letters (Parotid_L) count only as a separate word; "Lens" stays an organ. Heart chambers
    and lobes (``NOT_MIRRORED``) are not paired. Two labels of one side and organ are an error.
    """
    sides: dict[str, dict[str, int]] = {}
    for value, name in enumerate(label_names[1:], start=1):
        parsed = _side_and_organ(name)
        if not parsed or any(word in parsed[1] for word in NOT_MIRRORED):
            continue
        side, organ = parsed
        if side in sides.setdefault(organ, {}):
            raise ValueError(f"labels {label_names[sides[organ][side]]!r} and {name!r} name the same side of "
                             f"one organ; rename one, or list the pairs in the dataset file (\"label_pairs\")")
        sides[organ][side] = value
    return tuple(sorted((found["l"], found["r"]) for found in sides.values() if set(found) == {"l", "r"}))


def check_label_pairs(pairs, label_names: tuple[str, ...]) -> LabelPairs:
    """Pairs as (left, right) value tuples, each a foreground label (value or name) used once."""
    def value(v) -> int:
        if isinstance(v, str) and v in label_names:
            return label_names.index(v)
        if isinstance(v, int) and not isinstance(v, bool) and 0 < v < len(label_names):
            return v
        raise ValueError(f"label_pairs entry {v!r} is neither a foreground label value "
                         f"(1..{len(label_names) - 1}) nor a label name")
    if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ValueError(f"label_pairs must be a list of [left, right] pairs, got {pairs!r}")
    out = tuple((value(a), value(b)) for a, b in pairs)
    used = [v for pair in out for v in pair]
    if len(used) != len(set(used)):
        raise ValueError(f"label_pairs {pairs!r}: a label may be in one pair only, and not twice")
    return out


LEFT_RIGHT_AXIS = 0      # cached cases are RAS: spatial axis 0 runs from the patient's left to right


def mirrored_labels(pairs: LabelPairs, size: int) -> list[int]:
    """Label value -> its value in the left-right mirror image (each pair swapped, every other label
    kept), for values 0..size-1: what a flip relabels, or the channel order a mirror's output maps back by."""
    order = list(range(size))
    for left, right in pairs:
        order[left], order[right] = right, left
    return order


# BTCV's numbering, as in the reference Swin UNETR dataset_0.json.
BTCV_LABELS = (
    "background", "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver",
    "stomach", "aorta", "inferior_vena_cava", "portal_and_splenic_veins", "pancreas",
    "right_adrenal_gland", "left_adrenal_gland",
)


@dataclass(frozen=True)
class TaskSpec:
    """How one task's volumes are read, normalised and cropped for training."""

    name: str
    modality: str                               # "CT" or "MRI" (as in dataset.json)
    channel_names: tuple[str, ...]              # one per input channel, dataset.json order
    label_names: tuple[str, ...]                # index = label value; 0 is background
    spacing_mm: tuple[float, float, float]      # target voxel size after resampling, RAS order
    intensity: IntensityKind                    # CT: clip to window_hu, scale to [0, 1]; MRI: z-score
    window_hu: tuple[float, float] | None       # (low, high) HU for ct_window, else None
    roi_size: tuple[int, int, int]              # training crop; each side divisible by 32 (Swin's 5 halvings)
    dataset_file: str = "dataset.json"          # BTCV's reference layout uses dataset_0.json
    label_pairs: LabelPairs | None = None       # (left, right) values a left-right flip swaps;
                                                # None = from Left*/Right* label names

    def __post_init__(self) -> None:
        try:
            pairs = (left_right_pairs(self.label_names) if self.label_pairs is None
                     else check_label_pairs(self.label_pairs, self.label_names))
        except ValueError as e:
            raise ValueError(f"task {self.name}: {e}") from None
        object.__setattr__(self, "label_pairs", pairs)   # frozen: settled once, JSON lists back to tuples
        if any(side % 32 or side < 64 for side in self.roi_size):
            raise ValueError(f"task {self.name}: roi_size {self.roi_size} must have sides that are "
                             "multiples of 32 and at least 64 (Swin UNETR downsamples 5 times)")
        if (self.intensity == "ct_window") != (self.window_hu is not None):
            raise ValueError(f"task {self.name}: window_hu is required for ct_window and only for it")

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _ct(name, labels, spacing, window, roi=(96, 96, 96), dataset_file="dataset.json") -> TaskSpec:
    return TaskSpec(name, "CT", ("CT",), labels, spacing, "ct_window", window, roi, dataset_file)


def _mri(name, channels, labels, spacing, roi=(96, 96, 96)) -> TaskSpec:
    return TaskSpec(name, "MRI", channels, labels, spacing, "zscore_nonzero", None, roi)


# CT windows: BTCV's is the reference code's a_min/a_max; the MSD ones are the 0.5/99.5 percentiles
# of foreground HU that nnU-Net's fingerprints report, rounded. Spacings are the tasks' median
# voxel sizes (nnU-Net), coarsened where the reference Swin UNETR recipes do.
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _ct("BTCV", BTCV_LABELS, (1.5, 1.5, 2.0), (-175.0, 250.0), dataset_file="dataset_0.json"),
    _mri("Task01_BrainTumour", ("FLAIR", "T1w", "t1gd", "T2w"),
         ("background", "edema", "non_enhancing_tumor", "enhancing_tumour"), (1.0, 1.0, 1.0),
         roi=(128, 128, 128)),
    _mri("Task02_Heart", ("MRI",), ("background", "left_atrium"), (1.25, 1.25, 1.37)),
    _ct("Task03_Liver", ("background", "liver", "cancer"), (1.0, 1.0, 1.0), (-17.0, 201.0)),
    # Hippocampus crops are about 35x50x35 voxels: the smallest valid ROI, volumes padded up to it.
    _mri("Task04_Hippocampus", ("MRI",), ("background", "anterior", "posterior"), (1.0, 1.0, 1.0),
         roi=(64, 64, 64)),
    _mri("Task05_Prostate", ("T2", "ADC"), ("background", "peripheral_zone", "transition_zone"),
         (0.625, 0.625, 3.6)),
    _ct("Task06_Lung", ("background", "cancer"), (0.8, 0.8, 1.25), (-1024.0, 325.0)),
    _ct("Task07_Pancreas", ("background", "pancreas", "cancer"), (0.8, 0.8, 2.5), (-96.0, 215.0)),
    _ct("Task08_HepaticVessel", ("background", "vessel", "cancer"), (0.8, 0.8, 1.5), (-3.0, 243.0)),
    _ct("Task09_Spleen", ("background", "spleen"), (0.8, 0.8, 1.6), (-41.0, 176.0)),
    _ct("Task10_Colon", ("background", "colon_cancer_primaries"), (0.8, 0.8, 3.0), (-30.0, 165.0)),
)}


def get_task(name: str) -> TaskSpec:
    """Look a task up by its exact name; an unknown name lists the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} "
                       "(or 'auto' for any MSD-format folder)") from None


def task_from_dict(data: dict) -> TaskSpec:
    """A TaskSpec from its JSON form (``task.json``, a model file): lists back to tuples. A file
    written before label pairs existed gets them from its label names."""
    return TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
