"""BTCV: 13 abdominal organs of very different sizes: crops lean towards foreground."""
from . import common

TASK = "BTCV"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, pos_neg_ratios=(1.0, 2.0, 3.0))
