"""Task05_Prostate: 32 two-channel cases: stronger stochastic depth, gentler learning rates."""
from . import common

TASK = "Task05_Prostate"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, drop_path_rate=(0.0, 0.4), lr=(5e-5, 1e-3))
