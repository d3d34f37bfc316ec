"""Task09_Spleen: One large organ: the shared defaults."""
from . import common

TASK = "Task09_Spleen"


def space(trial, ctx: common.SpaceContext) -> dict:
    return common.space(trial, ctx)
