"""Task07_Pancreas: Small organ and smaller tumours: foreground crops, more cross-entropy."""
from . import common

TASK = "Task07_Pancreas"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, pos_neg_ratios=(1.0, 2.0, 3.0), ce_weight=(0.5, 3.0))
