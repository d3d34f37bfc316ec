"""The report's three pictures (PNG, matplotlib's Agg backend: no screen needed)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from swinray.report.runs import RunRecord


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def dice_curves(runs: list[RunRecord], metric: str, path: Path) -> Path:
    """Validation Dice per run against training step, the best run drawn thickest."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    best = max(runs, key=lambda r: (r.best(metric) or (0, -math.inf))[1])
    for run in runs:
        steps, values = run.curves.get(metric, ([], []))
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, linewidth=2.5 if run is best else 1.2,
                    label=run.name + (" (best)" if run is best else ""))
    ax.set(xlabel="training step", ylabel=metric, title=f"{metric} per run")
    ax.grid(alpha=0.3)
    if len(runs) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _axis(values: list) -> tuple[np.ndarray, list[str], bool]:
    """A parameter's values on [0, 1], the tick labels, and whether the axis is logarithmic."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        x = np.array(values, dtype=float)
        log = bool(np.all(x > 0) and x.max() / x.min() > 100)
        t = np.log10(x) if log else x
        span = t.max() - t.min()
        scaled = (t - t.min()) / span if span else np.full_like(t, 0.5)
        low, high = x.min(), x.max()
        return scaled, [f"{low:.3g}", f"{high:.3g}"], log
    levels = sorted({repr(v) for v in values})
    index = {v: i for i, v in enumerate(levels)}
    scaled = np.array([index[repr(v)] / max(len(levels) - 1, 1) for v in values])
    return scaled, [levels[0], levels[-1]], False


def parallel_coordinates(runs: list[RunRecord], params: list[str], metric: str, path: Path) -> Path:
    """One line per run through every sampled parameter and its best Dice, coloured by that Dice."""
    plt = _pyplot()
    scores = [(r.best(metric) or (0, math.nan))[1] for r in runs]
    columns = [_axis([r.params.get(p) for r in runs]) for p in params]
    dice = np.array(scores, dtype=float)
    finite = dice[np.isfinite(dice)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    dice_axis = (dice - low) / (high - low) if high > low else np.full_like(dice, 0.5)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * (len(params) + 1)), 4.2), dpi=110)
    cmap = plt.get_cmap("viridis")
    xs = np.arange(len(params) + 1)
    for i, run in enumerate(runs):
        ys = [c[0][i] for c in columns] + [dice_axis[i]]
        if math.isfinite(dice[i]):
            ax.plot(xs, ys, color=cmap(dice_axis[i]), linewidth=2, alpha=0.85)
        else:                                   # never validated (failed or stopped before a rung)
            ax.plot(xs, ys[:-1] + [0.0], color="grey", linestyle="--", linewidth=1, alpha=0.6)
    for x in xs:
        ax.axvline(x, color="black", linewidth=0.6)
    for x, (_, (lo, hi), log) in zip(xs, columns):
        ax.text(x, -0.06, lo, ha="center", va="top", fontsize=7)
        ax.text(x, 1.04, hi + (" (log)" if log else ""), ha="center", va="bottom", fontsize=7)
    ax.text(xs[-1], -0.06, f"{low:.3f}", ha="center", va="top", fontsize=7)
    ax.text(xs[-1], 1.04, f"{high:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [p.split(".", 1)[-1] for p in params] + [f"best {metric}"], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.set_title("hyperparameters against Dice (one line per run)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def per_class_bars(names: list[str], values: list[float], title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 4), dpi=110)
    ax.bar(range(len(names)), values, color="#1f77b4")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="Dice", title=title)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
