"""Task08_HepaticVessel: Thin vessels: cross-entropy weight matters as much as Dice."""
from . import common

TASK = "Task08_HepaticVessel"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, pos_neg_ratios=(1.0, 2.0, 3.0), ce_weight=(0.5, 3.0))
