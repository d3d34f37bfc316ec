"""Segmentation metrics: our per-case Dice and its worker-summed mean agree with MONAI's own."""
import math

import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from conftest import run_gloo_ranks
from swinray.seg.metrics import DiceMean, dice_per_case, hd95_per_case, outcomes


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
    truths[4], preds[4] = truths[4].clamp(max=1), preds[4].clamp(max=1)   # class 2 in neither: NaN, not counted
    shards = [DiceMean(2), DiceMean(2)]
    for i in range(6):                                     # two "workers", alternate cases
        shards[i % 2].add(dice_per_case(preds[i:i + 1], truths[i:i + 1], 3))
    merged = DiceMean(2)
    merged.sums, merged.counts = shards[0].sums + shards[1].sums, shards[0].counts + shards[1].counts
    keep = [0, 1, 2, 3, 5]                                 # MONAI scores a class in neither as 1: leave it out
    reference = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=False)
    reference(one_hot(preds[keep], 3), one_hot(truths[keep], 3))
    assert merged.counts.tolist() == [6, 5]
    assert math.isclose(merged.per_class()[1], float(reference.aggregate()[1]), rel_tol=1e-6)


def test_a_perfect_prediction_scores_dice_1_and_hd95_0():
    _, truth = boxes()
    assert dice_per_case(truth, truth, 3).tolist() == [[1.0, 1.0]]
    assert hd95_per_case(truth, truth, 3, (2.0, 1.0, 3.0)).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("axis, spacing_mm", [(0, 2.0), (1, 1.0), (2, 3.0)])
def test_a_one_voxel_shift_costs_hd95_of_that_axis_spacing_in_mm(axis, spacing_mm):
    truth = torch.zeros((1, 1, 16, 16, 16), dtype=torch.long)
    truth[..., 4:12, 4:12, 4:12] = 1
    shifted = torch.roll(truth, 1, dims=2 + axis)
    assert hd95_per_case(shifted, truth, 2, (2.0, 1.0, 3.0)).item() == spacing_mm


def test_a_false_positive_on_an_absent_class_scores_0_and_counts_and_a_missed_class_is_flagged():
    pred, truth = boxes()                                  # class 2 in the truth, predicted nowhere: missed
    pred[..., 0:2, 0:2, 0:2] = 3                           # class 3: absent from the truth, predicted
    dice = dice_per_case(pred, truth, 4)
    assert dice[0, 1].item() == 0.0 and dice[0, 2].item() == 0.0
    flags = outcomes(pred, truth, 4)
    assert flags["missed"].tolist() == [[False, True, False]]
    assert flags["false_positive"].tolist() == [[False, False, True]]
    mean = DiceMean(3)
    mean.add(dice)
    assert mean.counts.tolist() == [1, 1, 1]               # the false positive is counted, at 0
    assert math.isnan(hd95_per_case(pred, truth, 4, (1.0, 1.0, 1.0))[0, 2].item())


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


def _validate_shard(rank: int, init_file: str, preds: torch.Tensor, truths: torch.Tensor, out_dir: str) -> None:
    """One "worker": its own cases (every other one), then the all-reduce the training loop does."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mean = DiceMean(2)
        for i in range(rank, len(preds), 2):
            mean.add(dice_per_case(preds[i:i + 1], truths[i:i + 1], 3))
        mean.all_reduce(torch.device("cpu"))
        torch.save({"sums": mean.sums, "counts": mean.counts}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_workers_holding_different_cases_sum_to_one_worker_scoring_all(tmp_path):
    torch.manual_seed(1)
    preds, truths = torch.randint(0, 3, (5, 1, 8, 8, 8)), torch.randint(0, 3, (5, 1, 8, 8, 8))
    truths[3] = truths[3].clamp(max=1)                     # a false positive of class 2 in case 3
    preds[4], truths[4] = preds[4].clamp(max=1), truths[4].clamp(max=1)   # class 2 in neither
    run_gloo_ranks(_validate_shard, (str(tmp_path / "store"), preds, truths, str(tmp_path)))
    alone = DiceMean(2)
    alone.add(dice_per_case(preds, truths, 3))
    for rank in range(2):
        reduced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(reduced["sums"], alone.sums) and reduced["counts"].tolist() == alone.counts.tolist()
    assert alone.counts.tolist() == [5, 4]
