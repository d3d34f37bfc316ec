"""Segmentation metrics: our per-case Dice and its worker-summed mean agree with MONAI's own."""
import math

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from swinray.seg.metrics import DiceMean, dice_per_case, hd95_per_case


def boxes(shape=(1, 1, 16, 16, 16)):
    truth, pred = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    truth[..., 2:10, 2:10, 2:10] = 1          # 512 voxels
    pred[..., 4:10, 2:10, 2:10] = 1           # 384 voxels, all inside the truth
    truth[..., 12:14, 12:14, 12:14] = 2       # class 2: 8 voxels, missed entirely
    return pred, truth


def test_dice_of_nested_boxes_is_the_textbook_value():
    pred, truth = boxes()
    dice = dice_per_case(pred, truth, num_classes=3)
    assert dice.shape == (1, 2)
    assert math.isclose(float(dice[0, 0]), 2 * 384 / (512 + 384), rel_tol=1e-6)
    assert float(dice[0, 1]) == 0.0


def test_dice_mean_over_shards_equals_monai_over_all_cases():
    torch.manual_seed(0)
    preds = torch.randint(0, 3, (6, 1, 8, 8, 8))
    truths = torch.randint(0, 3, (6, 1, 8, 8, 8))
    truths[4] = truths[4].clamp(max=1)                     # class 2 absent in one case: NaN, not 0
    shards = [DiceMean(2), DiceMean(2)]
    for i in range(6):                                     # two "workers", alternate cases
        shards[i % 2].add(dice_per_case(preds[i:i + 1], truths[i:i + 1], 3))
    merged = DiceMean(2)
    merged.sums, merged.counts = shards[0].sums + shards[1].sums, shards[0].counts + shards[1].counts
    reference = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    reference(one_hot(preds, 3), one_hot(truths, 3))
    assert torch.allclose(torch.tensor(merged.per_class()), reference.aggregate().float(), atol=1e-6)
    assert merged.counts.tolist() == [6, 5]
    assert math.isclose(merged.mean(), float(reference.aggregate().mean()), rel_tol=1e-6)


def test_hd95_is_in_millimetres_and_matches_monai():
    pred, truth = boxes()
    ours = hd95_per_case(pred, truth, 3, (2.0, 1.0, 1.0))
    reference = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
        one_hot(pred, 3), one_hot(truth, 3), spacing=[2.0, 1.0, 1.0])
    assert torch.allclose(ours[:, 0], reference[:, 0])
    assert float(ours[0, 0]) == 4.0                        # 2 voxels short along x, 2 mm each


def test_all_reduce_in_a_process_group_keeps_sums_and_counts(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mean = DiceMean(2)
        mean.add(torch.tensor([[0.5, float("nan")], [1.0, 0.25]]))
        mean.all_reduce(torch.device("cpu"))
        assert mean.per_class() == [0.75, 0.25] and mean.counts.tolist() == [2, 1]
    finally:
        dist.destroy_process_group()
