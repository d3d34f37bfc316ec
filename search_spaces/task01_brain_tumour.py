"""Task01_BrainTumour: 4-channel MRI at a 128^3 ROI: one crop per step fits memory."""
from . import common

TASK = "Task01_BrainTumour"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, batch_sizes=(1,), pos_neg_ratios=(1.0, 2.0))
