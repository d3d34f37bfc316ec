"""Did pretraining learn its three proxy tasks? Read from the run's ``metrics.jsonl``.

A falling total loss can hide a proxy that was never learned (a rotation loss flat at chance, ln 4,
while reconstruction falls), and an encoder whose proxies were not learned makes a label-efficiency
study unable to tell anything. So a pretraining run reports, per proxy, the mean of its first and
last ``WINDOW`` steps, and calls the proxies learned when rotation ends at half of chance or below
and contrast and reconstruction each end at least 20% below where they began.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from swinray.pretext.views import NUM_ROTATIONS

WINDOW = 50                                   # steps averaged at each end
ROTATION_CHANCE = math.log(NUM_ROTATIONS)     # cross-entropy of a uniform guess over the rotations
ROTATION_LEARNED_BELOW = ROTATION_CHANCE / 2
LEARNED_DROP = 0.20                           # contrast and reconstruction: 20% below their start
PROXIES = {"rotation": "loss_rot", "contrast": "loss_contrast", "reconstruction": "loss_recon"}


def step_losses(metrics_log: Path) -> list[dict]:
    """One row per training step (the last line of a step wins), in step order."""
    by_step: dict[int, dict] = {}
    for line in Path(metrics_log).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:           # a line cut by a kill
            continue
        if all(key in row for key in PROXIES.values()):
            by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


def proxy_progress(metrics_log: Path, window: int = WINDOW) -> dict:
    """``{proxy: {first, last, drop}, rotation_chance, learned}``; empty below two windows of steps."""
    rows = step_losses(metrics_log)
    if len(rows) < 2 * window:
        return {}
    out: dict = {}
    for proxy, key in PROXIES.items():
        first = sum(r[key] for r in rows[:window]) / window
        last = sum(r[key] for r in rows[-window:]) / window
        out[proxy] = {f"first_{window}_mean": round(first, 4), f"last_{window}_mean": round(last, 4),
                      "drop": round(1 - last / first, 3) if first > 0 else 0.0}
    last = f"last_{window}_mean"
    out["rotation_chance"] = round(ROTATION_CHANCE, 4)
    out["learned"] = (out["rotation"][last] <= ROTATION_LEARNED_BELOW
                      and out["contrast"]["drop"] >= LEARNED_DROP
                      and out["reconstruction"]["drop"] >= LEARNED_DROP)
    return out


def describe(progress: dict) -> str:
    """One line for people."""
    if not progress:
        return f"proxy tasks: fewer than {2 * WINDOW} steps logged, too few to judge"
    first, last = f"first_{WINDOW}_mean", f"last_{WINDOW}_mean"
    parts = [f"{proxy} {progress[proxy][first]:.3f} -> {progress[proxy][last]:.3f}" for proxy in PROXIES]
    verdict = ("learned" if progress["learned"] else
               f"NOT all learned (rotation must end <= {ROTATION_LEARNED_BELOW:.3f}, half of chance, and "
               f"contrast and reconstruction >= {LEARNED_DROP:.0%} below their start)")
    return f"proxy tasks (mean of first -> last {WINDOW} steps): {', '.join(parts)}; {verdict}"
