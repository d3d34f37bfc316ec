"""Post-processing chosen on validation: an organ keeps only its largest connected component.

nnU-Net's rule: a class is post-processed only if that raised its validation Dice, so a structure
that is often in pieces, or a task where islands are real, stays as predicted. Training measures
both Dice values at every validation; the model file records the classes chosen at its best
step, and ``evaluate`` and ``predict`` apply them (``largest_component=false``: the raw prediction).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms.utils import get_largest_connected_component_mask
from scipy.ndimage import find_objects


def keep_largest_components(labels: torch.Tensor | np.ndarray, classes: Sequence[int]):
    """A (1, *S) label map in which each of ``classes`` keeps its largest component (26-connected in
    3D); its other voxels become background. Other classes, the input's type and the input itself
    are unchanged. Each class is labelled within its bounding box only, and an absent one is
    skipped: on a large CT, a pass over the whole volume per class would cost seconds and gigabytes."""
    if not classes:
        return labels
    out = np.array(labels.numpy() if isinstance(labels, torch.Tensor) else labels, copy=True)
    boxes = find_objects(out[0])                # one pass: each label value's bounding box, None if absent
    for c in (int(c) for c in classes):
        if c > len(boxes) or boxes[c - 1] is None:
            continue
        region = out[0][boxes[c - 1]]           # a view: written in place into ``out``
        mask = region == c
        region[mask & ~get_largest_connected_component_mask(mask)] = 0
    return torch.from_numpy(out) if isinstance(labels, torch.Tensor) else out


def classes_improved(raw_dice: Sequence[float], kept_dice: Sequence[float]) -> list[int]:
    """Label values (1 = the first foreground class) whose validation Dice rose when only their
    largest component was kept; a tie or a class validation never saw is left as predicted."""
    return [c for c, (raw, kept) in enumerate(zip(raw_dice, kept_dice), start=1)
            if math.isfinite(raw) and math.isfinite(kept) and kept > raw]


def chosen_classes(meta: dict, enabled: bool = True) -> tuple[int, ...]:
    """The classes a model file's validation chose to post-process (none in files from before the
    choice existed), or none when not ``enabled``."""
    return tuple(int(c) for c in meta.get("largest_component_classes", ())) if enabled else ()


def describe(classes: Sequence[int], label_names: Sequence[str], meta: dict | None = None) -> str:
    """For the progress lines; with the model file's ``meta``, why there is none if it recorded none."""
    if not classes:
        return "no post-processing" + (" (none recorded in this model file)"
                                       if meta is not None and "largest_component_classes" not in meta else "")
    return "largest connected component kept for " + ", ".join(label_names[c] for c in classes)
