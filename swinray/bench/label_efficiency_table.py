"""The label-efficiency table: test Dice over seeds per fraction and arm, each SSL arm's paired
difference from scratch with its Student t interval, as markdown and as a plot."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from swinray.storage import atomic_write

SCRATCH = "scratch"


def mean_sd(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value) and count."""
    return {"mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def paired_difference(ours: dict[int, float], scratch: dict[int, float], level: float = 0.95) -> dict:
    """Mean of ours - scratch over the seeds both finished, with a Student t interval (n - 1 degrees of
    freedom): the seeds are the replicates, each pairing two runs that share cases and randomness."""
    from scipy.stats import t

    seeds = sorted(set(ours) & set(scratch))
    diffs = [ours[s] - scratch[s] for s in seeds]
    out = {**mean_sd(diffs), "seeds": seeds, "low": None, "high": None}
    if len(diffs) > 1:
        half = float(t.ppf(0.5 + level / 2, len(diffs) - 1)) * out["sd"] / math.sqrt(len(diffs))
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def _precision(rows: list[dict]) -> str:
    """The cell's training precision; a cell whose runs differ (machines with and without native bf16
    on a CPU) says so, as its runs did not train alike."""
    kinds = sorted({"bf16" if r["train_bf16"] else "float32" for r in rows if r.get("train_bf16") is not None})
    return " and ".join(kinds) if kinds else "?"


def summarise(rows: list[dict], arm_names: list[str]) -> list[dict]:
    """One cell per fraction and arm: test Dice mean ± sd over seeds, and each SSL arm's paired difference."""
    cells = []
    for fraction in sorted({r["fraction"] for r in rows}):
        at = [r for r in rows if r["fraction"] == fraction]
        by_arm = {arm: {r["seed"]: r["test_dice"] for r in at if r["arm"] == arm and r.get("test_dice") is not None}
                  for arm in arm_names}
        cases = sorted({r["training_cases"] for r in at if r.get("training_cases")})
        cells.append({"fraction": fraction, "training_cases": cases,
                      "failed": sum(1 for r in at if r.get("test_dice") is None),
                      "test_images_seen_in_pretraining": max((r.get("test_images_seen_in_pretraining", 0) for r in at),
                                                             default=0),
                      "precision": _precision(at),
                      "arms": {arm: mean_sd(list(by_arm[arm].values())) for arm in arm_names},
                      "differences": {arm: paired_difference(by_arm[arm], by_arm[SCRATCH])
                                      for arm in arm_names if arm != SCRATCH}})
    return cells


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    sd = f" ± {stat['sd']:.3f}" if stat["sd"] is not None else ""
    return f"{stat['mean']:.3f}{sd} (n={stat['n']})"


def _fmt_difference(d: dict) -> str:
    if d["mean"] is None:
        return "-"
    interval = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d["low"] is not None else " (one seed: no interval)"
    return f"{d['mean']:+.3f}{interval} (n={d['n']})"


def markdown_table(cells: list[dict], arm_names: list[str]) -> str:
    """Fractions down, arms across: test Dice mean ± sd over seeds, then SSL - scratch with its 95% interval."""
    gains = [a for a in arm_names if a != SCRATCH]
    head = ["fraction", "training cases", *arm_names, *(f"{a} - scratch (95% CI)" for a in gains), "failed runs",
            "test images seen in pretraining", "training precision"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([
            f"{c['fraction']:g}", "/".join(map(str, c["training_cases"])) or "?",
            *(_fmt(c["arms"][a]) for a in arm_names), *(_fmt_difference(c["differences"][a]) for a in gains),
            str(c["failed"]), str(c["test_images_seen_in_pretraining"]), c["precision"]]) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], arm_names: list[str], title: str, path: Path) -> Path:
    """Test Dice (mean ± sd over seeds) against label fraction, one line per arm, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, arm in enumerate(arm_names):
        points = [(c["fraction"], c["arms"][arm]["mean"], c["arms"][arm]["sd"] or 0.0)
                  for c in cells if c["arms"][arm]["mean"] is not None]
        if points:
            x, y, sd = zip(*points)
            shift = 1 + 0.03 * (i - (len(arm_names) - 1) / 2)      # side by side, not on top of each other
            ax.errorbar([v * shift for v in x], y, yerr=sd, marker="o", capsize=3, label=arm)
    fractions = [c["fraction"] for c in cells]
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("fraction of labelled training cases")
    ax.set_ylabel("test Dice (mean foreground), mean ± sd over seeds")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:     # none while every run so far has failed
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))    # rewritten after every run: never half a file
    plt.close(fig)
    return path
