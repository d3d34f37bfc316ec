"""Sliding-window inference and the way back to the input's own grid.

Preprocessing reorients, crops and resamples each volume; the prediction is made on that grid and
then resampled onto the source voxel grid through the two affines with MONAI's ``SpatialResample``
(the class probabilities trilinearly, then argmax), so a label map lines up voxel for voxel with
the image it came from, oblique or anisotropic. Outside the preprocessing crop every class has
probability 0 and argmax gives background.
"""
from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import SpatialResample


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: torch.Tensor, roi_size, sw_batch_size: int,
                          overlap: float, use_amp: bool = False) -> torch.Tensor:
    """(1, C, *S) image -> (1, K, *S) softmax probabilities, windows of ``roi_size`` (S may be smaller)."""
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits = sliding_window_inference(image, tuple(roi_size), sw_batch_size, model, overlap=overlap,
                                          mode="gaussian")
    return torch.softmax(logits.float(), dim=1)


def labels_on_source_grid(probabilities: torch.Tensor, affine, source_affine, source_shape) -> np.ndarray:
    """(K, *S) probabilities on the preprocessed grid (voxel->world ``affine``) -> (*source_shape) uint8."""
    probs = MetaTensor(probabilities.float().cpu(), affine=torch.as_tensor(affine, dtype=torch.float64))
    resampled = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
        probs, dst_affine=torch.as_tensor(source_affine, dtype=torch.float64),
        spatial_size=tuple(int(s) for s in source_shape))
    return torch.as_tensor(resampled).argmax(0).to(torch.uint8).numpy()
