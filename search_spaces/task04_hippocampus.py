"""Task04_Hippocampus: Tiny volumes (about 35x50x35): more crops per step are cheap."""
from . import common

TASK = "Task04_Hippocampus"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, batch_sizes=(1, 2, 4), pos_neg_ratios=(0.5, 1.0, 2.0))
