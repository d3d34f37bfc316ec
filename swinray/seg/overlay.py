"""Validation pictures for Aim: the slice through the largest structure, truth beside prediction."""
from __future__ import annotations

import numpy as np

# Distinct colours (tab20-like), one per foreground class; class k uses PALETTE[(k - 1) % 20].
PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
    [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210],
    [219, 219, 141], [158, 218, 229], [127, 127, 127], [199, 199, 199]], dtype=np.float32)


def legend(label_names) -> str:
    """'spleen=#1f77b4, ...' for the image caption."""
    return ", ".join(f"{name}=#{''.join(f'{int(c):02x}' for c in PALETTE[(k - 1) % len(PALETTE)])}"
                     for k, name in enumerate(label_names) if k)


def overlay_pair(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(X, Y, Z) image, truth and prediction -> (Y, 2X + 2, 3) uint8: truth left, prediction right.

    The axial slice is the one with the most ground-truth foreground voxels (the largest structure).
    """
    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    grey = image[:, :, z].astype(np.float32)
    low, high = np.percentile(grey, [1, 99])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)[..., None].repeat(3, -1) * 255

    def paint(labels: np.ndarray) -> np.ndarray:
        out = grey.copy()
        mask = labels[:, :, z] > 0
        colours = PALETTE[(labels[:, :, z][mask].astype(int) - 1) % len(PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colours
        return out

    gap = np.full((2, grey.shape[1], 3), 255.0)
    side_by_side = np.concatenate([paint(truth), gap, paint(pred)], axis=0)   # along X
    return np.ascontiguousarray(np.rot90(side_by_side).astype(np.uint8))     # rows = Y (anterior up)
