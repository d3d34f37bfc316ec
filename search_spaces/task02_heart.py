"""Task02_Heart: 20 training volumes: stronger stochastic depth against overfitting."""
from . import common

TASK = "Task02_Heart"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx, drop_path_rate=(0.0, 0.4), lr=(5e-5, 1e-3))
