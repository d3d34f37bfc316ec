"""Task03_Liver: Liver is large, tumours small: more foreground crops."""
from . import common

TASK = "Task03_Liver"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, pos_neg_ratios=(1.0, 2.0, 3.0, 4.0))
