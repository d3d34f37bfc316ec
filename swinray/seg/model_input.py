"""One source volume -> the model's input grid and back: the preprocessing the model was trained with."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from monai.data.utils import dense_patch_slices

from swinray.config import VolumeLimits
from swinray.data.case_pipeline import load_case
from swinray.data.cases import Case
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import as_meta_tensor, preprocess_transforms
from swinray.seg.inference import Mirrors, labels_on_source_grid, predict_probabilities
from swinray.seg.postprocess import keep_largest_components


@functools.lru_cache(maxsize=4)
def _image_transforms(task: TaskSpec):
    return preprocess_transforms(task, labelled=False)


class Segmented(NamedTuple):
    labels: np.ndarray                  # the label map on the source grid, uint8, post-processed
    truth: np.ndarray | None            # the verified source label, if the case has one
    affine: np.ndarray                  # the source affine
    windows: int                        # sliding windows the model ran on
    unprocessed: np.ndarray             # before post-processing (``labels`` itself when there was none)


def count_windows(shape, roi_size, overlap: float) -> int:
    """How many windows MONAI's ``sliding_window_inference`` runs on a volume of ``shape`` (it pads
    a volume smaller than the ROI up to it; windows step by ``roi * (1 - overlap)``)."""
    size = [max(int(s), int(r)) for s, r in zip(shape, roi_size)]
    step = [max(1, int(r * (1 - overlap))) if s > r else int(r) for s, r in zip(size, roi_size)]
    return len(dense_patch_slices(size, [int(r) for r in roi_size], step))


def segment_case(model: torch.nn.Module, case: Case, task: TaskSpec, roi_size, sw_batch_size: int,
                 overlap: float, device: torch.device, limits: VolumeLimits = VolumeLimits(),
                 mirrors: Mirrors = Mirrors(), largest_component: tuple[int, ...] = ()) -> Segmented:
    """The image is verified (within ``limits``) and preprocessed exactly as the training cache was
    (``CaseError`` names the file when it is unusable); the prediction, averaged over ``mirrors``, is
    resampled back onto the source voxel grid, where the ``largest_component`` classes keep only
    their largest connected component."""
    image, label, affine, _ = load_case(case, task, limits)
    prepared = _image_transforms(task)({"image": as_meta_tensor(image, affine)})["image"]
    probs = predict_probabilities(model, prepared.as_tensor().float()[None].to(device), roi_size, sw_batch_size,
                                  overlap, use_amp=device.type == "cuda", mirrors=mirrors)
    labels = labels_on_source_grid(probs[0], prepared.affine, affine, image.shape[1:])
    return Segmented(keep_largest_components(labels[None], largest_component)[0], label, affine,
                     count_windows(prepared.shape[1:], roi_size, overlap) * 2 ** len(mirrors.axes), labels)
