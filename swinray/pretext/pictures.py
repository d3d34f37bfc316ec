"""What the pretext tasks see, as one picture for Aim: the rotated crop, its masked view, the reconstruction."""
from __future__ import annotations

import numpy as np
import torch

CAPTION = "rotated input | masked view (what the encoder sees) | reconstruction"


def views_side_by_side(original: torch.Tensor, masked: torch.Tensor, reconstruction: torch.Tensor) -> np.ndarray:
    """Three (X, Y, Z) volumes -> (Y, 3X + 4, 3) uint8: their middle axial slices, left to right.

    All three share the original's grey window (1st-99th percentile), so a reconstruction that is
    too dark or too bright looks it."""
    z = original.shape[-1] // 2
    slices = [t.detach().float().cpu()[:, :, z].numpy() for t in (original, masked, reconstruction)]
    low, high = np.percentile(slices[0], [1, 99])
    scaled = [np.clip((s - low) / max(high - low, 1e-6), 0, 1) * 255 for s in slices]
    gap = np.full((2, slices[0].shape[1]), 255.0)
    row = np.concatenate([scaled[0], gap, scaled[1], gap, scaled[2]], axis=0)     # along X
    grey = np.rot90(row)[..., None].repeat(3, axis=-1)                            # rows = Y
    return np.ascontiguousarray(grey.astype(np.uint8))
