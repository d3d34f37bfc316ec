"""One source volume -> the model's input grid and back: the preprocessing the model was trained with."""
from __future__ import annotations

import functools

import numpy as np
import torch

from swinray.data.case_pipeline import load_case
from swinray.data.datasets import Case
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import as_meta_tensor, preprocess_transforms
from swinray.seg.inference import labels_on_source_grid, predict_probabilities


@functools.lru_cache(maxsize=4)
def _image_transforms(task: TaskSpec):
    return preprocess_transforms(task, labelled=False)


def segment_case(model: torch.nn.Module, case: Case, task: TaskSpec, roi_size, sw_batch_size: int,
                 overlap: float, device: torch.device) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(label map on the source grid, verified source label or None, source affine).

    The image is verified and preprocessed exactly as the training cache was (``CaseError`` names
    the file when it is unusable); the prediction is resampled back onto the source voxel grid.
    """
    image, label, affine, _ = load_case(case, task)
    prepared = _image_transforms(task)({"image": as_meta_tensor(image, affine)})["image"]
    probs = predict_probabilities(model, prepared.as_tensor().float()[None].to(device), roi_size, sw_batch_size,
                                  overlap, use_amp=device.type == "cuda")
    return labels_on_source_grid(probs[0], prepared.affine, affine, image.shape[1:]), label, affine
