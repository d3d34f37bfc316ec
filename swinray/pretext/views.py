"""Pretext views of Tang et al. (CVPR 2022): two augmented views, rotation classes, inner cutout.

Crops are (B, C, X, Y, Z) in RAS orientation (the preprocessing reorients every case), so the
axial plane is (X, Y) and Z runs inferior -> superior. Every random draw comes from the explicit
CPU ``torch.Generator`` passed in, so a batch depends only on the generator's seed, never on the
device; results are placed on the input's device with the input's dtype.

    .venv/bin/python -m pytest tests/unit/test_pretext.py -q
"""
from __future__ import annotations

import math

import torch

AXIAL_DIMS = (-3, -2)            # X and Y of (B, C, X, Y, Z): rotations about the z-axis, as in the paper
NUM_ROTATIONS = 4                # 0, 90, 180, 270 degrees
# Flips along X (left-right) and Z (inferior-superior), each with probability 1/2. Never along Y:
# a Y flip equals an X flip followed by a 180-degree rotation, so one image would carry two labels.
FLIP_DIMS = (-3, -1)
INTENSITY_SCALE = (0.9, 1.1)     # mild, in the units of the normalised intensities
INTENSITY_SHIFT = (-0.1, 0.1)
# Cutout boxes measure 5% to 25% of each side, as the reference ``aug_rand`` (tolr=0.05, max_block_sz=0.25).
BOX_SIDE_FRACTION = (0.05, 0.25)
MAX_BOXES = 512                  # candidate boxes per sample before giving up on the drawn target
_BOX_CHUNK = 64                  # candidates drawn per generator call


def _check_volume(x: torch.Tensor, what: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{what}: expected a (B, C, X, Y, Z) batch, got shape {tuple(x.shape)}")


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1, 1) on x's device and dtype, to broadcast over a sample."""
    return values.to(x.device, x.dtype).view(-1, *[1] * (x.ndim - 1))


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator)


def rotate(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample by k * 90 degrees in the axial plane; k is its class label.

    x: (B, C, X, Y, Z) with X == Y (a 90-degree turn must keep the shape).
    Returns the rotated batch (same shape) and labels (B,) long in 0..3, on x's device.
    """
    _check_volume(x, "rotate")
    sides = [x.shape[d] for d in AXIAL_DIMS]
    if sides[0] != sides[1]:
        raise ValueError(f"rotate: the axial plane must be square to turn by 90 degrees, got X, Y = "
                         f"{sides[0]}, {sides[1]}; use equal first two sides in model.roi_size")
    labels = torch.randint(0, NUM_ROTATIONS, (x.shape[0],), generator=generator).to(x.device)
    rotated = torch.empty_like(x)
    for k in range(NUM_ROTATIONS):               # one call per class, not per sample
        chosen = labels == k
        rotated[chosen] = torch.rot90(x[chosen], k, AXIAL_DIMS)
    return rotated, labels


def _box_limits(spatial: tuple[int, ...], max_fraction: float) -> tuple[list[int], list[int]]:
    """Smallest and largest box side per axis; one box never exceeds max_fraction of the volume."""
    scale = min(BOX_SIDE_FRACTION[1], max_fraction ** (1 / len(spatial)))
    high = [max(1, math.floor(side * scale)) for side in spatial]
    low = [min(h, max(1, math.floor(side * BOX_SIDE_FRACTION[0]))) for side, h in zip(spatial, high)]
    return low, high


def _cutout_mask(spatial: tuple[int, ...], max_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """(*spatial) bool mask of random boxes covering a drawn fraction in (0, max_fraction].

    The target is uniform in (0, max_fraction] (as the reference draws its drop budget); boxes are
    added until it is reached, skipping any box whose new voxels would overshoot max_fraction.
    """
    budget = math.floor(max_fraction * math.prod(spatial))
    low, high = _box_limits(spatial, max_fraction)
    target = max(1, math.ceil((1.0 - float(torch.rand(1, generator=generator))) * budget))
    lows, highs, extents = torch.tensor(low), torch.tensor(high), torch.tensor(spatial)
    mask = torch.zeros(spatial, dtype=torch.bool)
    covered, tried = 0, 0
    while covered < target and tried < MAX_BOXES:
        sides = lows + (torch.rand(_BOX_CHUNK, len(spatial), generator=generator) * (highs - lows + 1)).long()
        starts = (torch.rand(_BOX_CHUNK, len(spatial), generator=generator) * (extents - sides + 1)).long()
        for side, start in zip(sides.tolist(), starts.tolist()):
            tried += 1
            box = mask[tuple(slice(a, a + s) for a, s in zip(start, side))]
            new = covered + int((~box).sum())
            if new <= budget:
                box.fill_(True)
                covered = new
            if covered >= target or tried >= MAX_BOXES:
                break
    return mask


def cutout(x: torch.Tensor, max_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner cutout: replace random boxes by noise, masking a fraction in (0, max_fraction] per sample.

    As the reference ``aug_rand``, boxes of 5-25% of each side are filled with noise in [0, 1)
    (the reference rescales Gaussian noise to [0, 1]; windowed CT lives there too) until a budget
    drawn uniformly in (0, max_fraction] of the volume is covered. The reference's second pass
    (pasting boxes from another sample) is not done. Every channel of a masked voxel is replaced.

    x: (B, C, X, Y, Z). Returns the masked batch (same shape, dtype, device) and the mask
    (B, 1, X, Y, Z) bool, true exactly where voxels were replaced.
    """
    _check_volume(x, "cutout")
    spatial = tuple(x.shape[2:])
    if not 0 < max_fraction <= 1:
        raise ValueError(f"pretext.cutout_max_fraction={max_fraction}: must be in (0, 1] (the paper uses "
                         f"0.3); the reconstruction task needs something to reconstruct")
    _, high = _box_limits(spatial, max_fraction)
    if math.prod(high) > max_fraction * math.prod(spatial):
        raise ValueError(f"pretext.cutout_max_fraction={max_fraction}: too small for a {spatial} crop "
                         f"(not even a {tuple(high)} box fits)")
    mask = torch.stack([_cutout_mask(spatial, max_fraction, generator) for _ in range(x.shape[0])])
    noise = torch.rand(int(mask.sum()) * x.shape[1], generator=generator)
    mask = mask.unsqueeze(1).to(x.device)                          # (B, 1, X, Y, Z)
    masked = x.clone()
    masked[mask.expand_as(x)] = noise.to(x.device, x.dtype)
    return masked, mask


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip along FLIP_DIMS with probability 1/2 each, then x * scale + shift per sample."""
    out = x
    for dim in FLIP_DIMS:
        flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        out = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), out.flip(dim), out)
    scale = _per_sample(_uniform(x.shape[0], INTENSITY_SCALE, generator), x)
    shift = _per_sample(_uniform(x.shape[0], INTENSITY_SHIFT, generator), x)
    return out * scale + shift


def two_views(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of the same crops, the positives of the contrastive task.

    Per sample and view: a flip along X (left-right) with probability 1/2, a flip along Z
    (inferior-superior) with probability 1/2, then ``x * scale + shift`` with scale uniform in
    [0.9, 1.1] and shift uniform in [-0.1, 0.1] (one value per sample, all channels alike).
    x: (B, C, X, Y, Z) -> two tensors of the same shape, dtype and device.
    """
    _check_volume(x, "two_views")
    return _augment(x, generator), _augment(x, generator)


def make_ssl_batch(x: torch.Tensor, max_fraction: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Everything one pretraining step needs from a batch of crops x (B, C, X, Y, Z).

    ``two_views`` makes two views; each is rotated (``rotate``) and cut out (``cutout``).
    Returns ``view1``/``view2`` (network inputs, B, C, X, Y, Z), ``rot1``/``rot2`` (rotation
    classes, B long), ``target1``/``target2`` (the rotated views before cutout: reconstruction
    targets) and ``mask1``/``mask2`` (B, 1, X, Y, Z bool, where the cutout landed).
    """
    out: dict[str, torch.Tensor] = {}
    for i, view in enumerate(two_views(x, generator), start=1):
        rotated, labels = rotate(view, generator)
        masked, mask = cutout(rotated, max_fraction, generator)
        out.update({f"view{i}": masked, f"rot{i}": labels, f"target{i}": rotated, f"mask{i}": mask})
    return out
