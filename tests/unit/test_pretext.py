"""Pretext views: the rotation label is the applied rotation, cutout stays within its budget and
marks exactly what it changed, two views are the documented augmentations, draws are seeded."""
import itertools

import pytest
import torch

from swinray.pretext.views import cutout, make_ssl_batch, rotate, two_views


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rotation_label_is_the_number_of_quarter_turns_in_the_axial_plane():
    # (B, C, X, Y, Z) with one bright voxel at x=1, y=0, z=2 in both channels.
    x = torch.zeros(16, 2, 4, 4, 3)
    x[:, :, 1, 0, 2] = 1.0
    # Quarter turns from +X towards +Y about the volume centre: (x, y) -> (3 - y, x); z is kept.
    lands_at = {0: (1, 0, 2), 1: (3, 1, 2), 2: (2, 3, 2), 3: (0, 2, 2)}
    rotated, labels = rotate(x, seeded(0))
    assert labels.dtype == torch.long and labels.shape == (16,)
    assert set(labels.tolist()) == {0, 1, 2, 3}               # this seed draws every class
    for sample, k in zip(rotated, labels.tolist()):
        for channel in sample:
            assert channel.nonzero().tolist() == [list(lands_at[k])]


def test_rotate_needs_a_square_axial_plane():
    with pytest.raises(ValueError, match="axial plane must be square.*model.roi_size"):
        rotate(torch.rand(1, 1, 8, 16, 8), seeded(0))


def test_same_seed_gives_the_same_batch_and_another_seed_a_different_one():
    x = torch.rand(2, 1, 16, 16, 16)
    a, b, c = (make_ssl_batch(x, 0.3, seeded(s)) for s in (1, 1, 2))
    assert a.keys() == {"view1", "view2", "rot1", "rot2", "target1", "target2", "mask1", "mask2"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["view1"], c["view1"]) and not torch.equal(a["mask1"], c["mask1"])


def test_every_output_keeps_the_input_device_and_float_outputs_its_dtype():
    x = torch.rand(2, 1, 16, 16, 16, dtype=torch.float64)
    batch = make_ssl_batch(x, 0.3, seeded(3))
    assert all(t.device == x.device for t in batch.values())
    for i in (1, 2):
        assert batch[f"view{i}"].dtype == batch[f"target{i}"].dtype == torch.float64
        assert batch[f"rot{i}"].dtype == torch.long and batch[f"mask{i}"].dtype == torch.bool
        assert batch[f"mask{i}"].shape == (2, 1, 16, 16, 16)


@pytest.mark.parametrize("max_fraction", [0.01, 0.3, 0.6])
def test_cutout_masks_a_fraction_in_0_max_and_the_mask_is_exactly_what_changed(max_fraction):
    x = torch.full((24, 2, 24, 24, 24), 5.0)          # noise lies in [0, 1), never 5.0
    masked, mask = cutout(x, max_fraction, seeded(4))
    fractions = mask.float().mean(dim=(1, 2, 3, 4))
    assert torch.all(fractions > 0) and torch.all(fractions <= max_fraction)
    assert fractions.std() > 0                          # the fraction is drawn, not fixed
    assert mask.shape == (24, 1, 24, 24, 24)
    assert torch.equal(masked != x, mask.expand_as(x))


def test_cutout_rejects_a_zero_fraction_with_the_config_field_name():
    with pytest.raises(ValueError, match=r"pretext.cutout_max_fraction=0.0: must be in \(0, 1\]"):
        cutout(torch.rand(1, 1, 8, 8, 8), 0.0, seeded(0))


def explain_as_augmentation(view: torch.Tensor, original: torch.Tensor) -> tuple[tuple[int, ...], float, float]:
    """The X/Z flips, scale and shift with view == scale * flip(original) + shift, or fail."""
    for flips in itertools.chain.from_iterable(itertools.combinations((-3, -1), n) for n in range(3)):
        flipped = original.flip(flips) if flips else original
        design = torch.stack([flipped.flatten(), torch.ones(flipped.numel(), dtype=flipped.dtype)], 1)
        scale, shift = torch.linalg.lstsq(design, view.flatten().unsqueeze(1)).solution.flatten().tolist()
        if torch.allclose(view, scale * flipped + shift, atol=1e-9):
            return flips, scale, shift
    raise AssertionError("the view is no flip of X and/or Z with an intensity scale and shift")


def test_two_views_are_x_and_z_flips_with_a_mild_intensity_scale_and_shift():
    x = torch.rand(8, 2, 6, 6, 6, dtype=torch.float64)
    seen_flips = set()
    for view in two_views(x, seeded(5)):
        for sample, original in zip(view, x):
            flips, scale, shift = explain_as_augmentation(sample, original)
            assert 0.9 <= scale <= 1.1 and -0.1 <= shift <= 0.1
            seen_flips.add(flips)
    assert seen_flips == {(), (-3,), (-1,), (-3, -1)}       # never along Y (see views.FLIP_DIMS)


def test_views_are_their_targets_outside_the_mask_and_targets_are_rotated_views():
    x = torch.rand(3, 1, 8, 8, 8, dtype=torch.float64)
    batch = make_ssl_batch(x, 0.3, seeded(6))
    for i in (1, 2):
        kept = ~batch[f"mask{i}"].expand_as(x)
        assert torch.equal(batch[f"view{i}"][kept], batch[f"target{i}"][kept])
        assert not torch.equal(batch[f"view{i}"], batch[f"target{i}"])
        for target, k, original in zip(batch[f"target{i}"], batch[f"rot{i}"].tolist(), x):
            explain_as_augmentation(torch.rot90(target, -k, (-3, -2)), original)
