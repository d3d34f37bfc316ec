"""Task10_Colon: Small primaries in a long scan: crops lean hard towards foreground."""
from . import common

TASK = "Task10_Colon"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, pos_neg_ratios=(2.0, 3.0, 5.0))
