"""Pretext views: the rotation label is the applied rotation, cutout stays within its budget."""
import pytest
import torch

from swinray.pretext.views import cutout, make_ssl_batch, rotate


def marker_volume(batch=16):
    x = torch.zeros(batch, 1, 8, 8, 4)
    x[:, 0, 1, 0, 2] = 1.0          # one bright voxel near a corner of the axial plane
    return x


def test_rotation_label_matches_the_applied_rotation():
    x = marker_volume()
    rotated, labels = rotate(x, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == {0, 1, 2, 3}          # 16 samples cover every class here
    for sample, k in zip(rotated, labels):
        expected = torch.rot90(x[0], int(k), (-3, -2))
        assert torch.equal(sample, expected)
        assert torch.equal(torch.rot90(sample, -int(k), (-3, -2)), x[0])


def test_same_seed_same_views_different_seed_different_views():
    x = torch.rand(4, 1, 16, 16, 16)
    a = make_ssl_batch(x, 0.3, torch.Generator().manual_seed(1))
    b = make_ssl_batch(x, 0.3, torch.Generator().manual_seed(1))
    c = make_ssl_batch(x, 0.3, torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["view1"], c["view1"])


@pytest.mark.parametrize("max_fraction", [0.05, 0.3, 0.6])
def test_cutout_fraction_stays_in_range_and_mask_marks_what_changed(max_fraction):
    x = torch.full((16, 1, 32, 32, 32), 5.0)
    masked, mask = cutout(x, max_fraction, torch.Generator().manual_seed(3))
    fractions = mask.float().mean(dim=(1, 2, 3, 4))
    assert torch.all(fractions > 0) and torch.all(fractions <= max_fraction)
    assert torch.equal(masked != 5.0, mask.expand_as(x))   # noise never equals 5.0 exactly


def test_cutout_rejects_a_fraction_outside_0_1():
    with pytest.raises(ValueError, match="cutout_max_fraction=0"):
        cutout(torch.rand(1, 1, 8, 8, 8), 0.0, torch.Generator())


def test_views_keep_device_and_dtype_and_targets_are_unmasked_rotations():
    x = torch.rand(2, 1, 16, 16, 16, dtype=torch.float64)
    batch = make_ssl_batch(x, 0.3, torch.Generator().manual_seed(4))
    assert batch["view1"].dtype == torch.float64 and batch["view1"].device == x.device
    for i in (1, 2):
        for sample, target, k in zip(x, batch[f"target{i}"], batch[f"rot{i}"]):
            assert torch.equal(target, torch.rot90(sample, int(k), (-3, -2)))
        kept = ~batch[f"mask{i}"].expand_as(x)
        assert torch.equal(batch[f"view{i}"][kept], batch[f"target{i}"][kept])


def test_rotation_needs_a_square_axial_plane():
    with pytest.raises(ValueError, match="square axial plane"):
        rotate(torch.rand(1, 1, 8, 16, 8), torch.Generator())
