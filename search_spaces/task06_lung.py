"""Task06_Lung: One small tumour per scan: crops lean hard towards foreground."""
from . import common

TASK = "Task06_Lung"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, pos_neg_ratios=(2.0, 3.0, 5.0))
