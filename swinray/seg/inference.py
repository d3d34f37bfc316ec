"""Sliding-window inference and the way back to the input's own grid.

Preprocessing reorients, crops and resamples each volume; the prediction is made on that grid and
then resampled onto the source voxel grid through the two affines with MONAI's ``SpatialResample``
(the class probabilities trilinearly, then argmax), so a label map lines up voxel for voxel with
the image it came from, oblique or anisotropic. Outside the preprocessing crop every class has
probability 0 and argmax gives background.

Test-time flips (``Mirrors``) average the probabilities of the image and of its mirror images along
the axes training flipped, each mapped back, as nnU-Net's mirroring: the model has learnt every one
of those views. A left-right mirror's probabilities also swap each (left, right) pair back, since
training labelled a mirrored right organ left.
"""
from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import SpatialResample

from swinray.data.tasks import LEFT_RIGHT_AXIS, mirrored_labels


class Mirrors(NamedTuple):
    """The spatial axes to mirror at test time (every combination of them: 2^n passes) and the class
    order a left-right mirror's output is read back in; no axes = one pass."""
    axes: tuple[int, ...] = ()
    left_right_classes: tuple[int, ...] = ()      # class c of the original = class [c] of the mirror

    @classmethod
    def of_model(cls, meta: dict, enabled: bool = True) -> Mirrors:
        """The flips a model file trained with (older files, without ``flip_axes``: left-right, the
        training default of every version), with its task's label pairs; none when not ``enabled``."""
        if not enabled:
            return cls()
        axes = tuple(int(a) for a in meta.get("flip_axes", (LEFT_RIGHT_AXIS,)))
        task = meta["task"]     # files without label_pairs predate pair swapping in training: none to swap
        classes = mirrored_labels(tuple(tuple(p) for p in task.get("label_pairs") or ()), len(task["label_names"]))
        return cls(axes, tuple(classes))

    def describe(self) -> str:
        if not self.axes:
            return "one pass (no test-time flips)"
        swapped = " (left-right pairs swapped back)" if self.left_right_classes != tuple(
            range(len(self.left_right_classes))) else ""
        return f"{2 ** len(self.axes)} passes: flipped along axes {list(self.axes)}{swapped}"


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: torch.Tensor, roi_size, sw_batch_size: int,
                          overlap: float, use_amp: bool = False, mirrors: Mirrors = Mirrors()) -> torch.Tensor:
    """(1, C, *S) image -> (1, K, *S) softmax probabilities, windows of ``roi_size`` (S may be smaller),
    averaged over ``mirrors``. Memory: the sum and one pass's probabilities, added a class at a time."""
    total = _one_pass(model, image, roi_size, sw_batch_size, overlap, use_amp)
    passes = 1
    for n in range(1, len(mirrors.axes) + 1):
        for axes in combinations(mirrors.axes, n):
            dims = [2 + a for a in axes]
            probs = _one_pass(model, image.flip(dims), roi_size, sw_batch_size, overlap, use_amp)
            swapped = LEFT_RIGHT_AXIS in axes and bool(mirrors.left_right_classes)
            for c in range(total.shape[1]):
                k = mirrors.left_right_classes[c] if swapped else c
                total[:, c:c + 1] += probs[:, k:k + 1].flip(dims)
            del probs
            passes += 1
    return total.div_(passes)


def _one_pass(model, image, roi_size, sw_batch_size: int, overlap: float, use_amp: bool) -> torch.Tensor:
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits = sliding_window_inference(image, tuple(roi_size), sw_batch_size, model, overlap=overlap,
                                          mode="gaussian")
    logits = logits.float()         # softmax in place: one volume of K channels, not two
    return logits.sub_(logits.amax(1, keepdim=True)).exp_().div_(logits.sum(1, keepdim=True))


def labels_on_source_grid(probabilities: torch.Tensor, affine, source_affine, source_shape) -> np.ndarray:
    """(K, *S) probabilities on the preprocessed grid (voxel->world ``affine``) -> (*source_shape) uint8."""
    probs = MetaTensor(probabilities.float().cpu(), affine=torch.as_tensor(affine, dtype=torch.float64))
    resampled = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
        probs, dst_affine=torch.as_tensor(source_affine, dtype=torch.float64),
        spatial_size=tuple(int(s) for s in source_shape))
    return torch.as_tensor(resampled).argmax(0).to(torch.uint8).numpy()
