"""Pretext views: rotation with its class label, inner cutout with its mask.

Every random draw comes from an explicit ``torch.Generator`` (on the CPU, so draws do not depend
on the device), and tensors stay on the input's device.
"""
from __future__ import annotations

import torch

AXIAL_DIMS = (-3, -2)        # X and Y of (B, C, X, Y, Z) in RAS: rotations in the axial plane
_BOX_SIDE = (1 / 8, 1 / 3)   # cutout boxes measure 1/8 to 1/3 of each side


def rotate(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample by k * 90 degrees in the axial plane; return it and k (B,) long."""
    if x.shape[AXIAL_DIMS[0]] != x.shape[AXIAL_DIMS[1]]:
        raise ValueError(f"rotation needs a square axial plane, got {tuple(x.shape[2:])}")
    ks = torch.randint(0, 4, (x.shape[0],), generator=generator)
    rotated = torch.stack([torch.rot90(sample, int(k), AXIAL_DIMS) for sample, k in zip(x, ks)])
    return rotated, ks.to(x.device)


def cutout(x: torch.Tensor, max_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace random inner boxes by Gaussian noise, masking (0, max_fraction] of each sample.

    Each sample draws a target fraction in [max_fraction / 4, max_fraction] and adds boxes
    until it is reached; a box that would overshoot ``max_fraction`` is not placed.
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"pretext.cutout_max_fraction={max_fraction}: must be in (0, 1]")
    spatial = x.shape[2:]
    total = float(torch.tensor(spatial).prod())
    mask = torch.zeros((x.shape[0], 1, *spatial), dtype=torch.bool)
    for b in range(x.shape[0]):
        target = max_fraction * (0.25 + 0.75 * float(torch.rand(1, generator=generator)))
        for _ in range(64):
            sides = [max(1, int(s * (_BOX_SIDE[0] + (_BOX_SIDE[1] - _BOX_SIDE[0]) * float(torch.rand(1, generator=generator)))))
                     for s in spatial]
            starts = [int(torch.randint(0, s - side + 1, (1,), generator=generator)) for s, side in zip(spatial, sides)]
            box = tuple(slice(a, a + side) for a, side in zip(starts, sides))
            trial = mask[b, 0].clone()
            trial[box] = True
            if trial.sum() / total > max_fraction:
                break
            mask[b, 0] = trial
            if trial.sum() / total >= target:
                break
    mask = mask.to(x.device)
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return torch.where(mask, noise, x), mask


def make_ssl_batch(x: torch.Tensor, max_fraction: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Two views of the same crops, each rotated independently and cut out (the paper's recipe).

    ``view*`` are the network inputs, ``rot*`` the rotation classes, ``target*`` the rotated
    views before cutout (reconstruction targets) and ``mask*`` where the cutout landed.
    """
    out = {}
    for i in (1, 2):
        rotated, labels = rotate(x, generator)
        masked, mask = cutout(rotated, max_fraction, generator)
        out.update({f"view{i}": masked, f"rot{i}": labels, f"target{i}": rotated, f"mask{i}": mask})
    return out
