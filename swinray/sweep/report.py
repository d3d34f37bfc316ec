"""A sweep's trials as rows, a Markdown table and the best trial, from Tune's ``ResultGrid``."""
from __future__ import annotations

import math
from pathlib import Path

from swinray.train.finetune_loop import MODEL_FILE


def _status(result, num_steps: int, cut: set[str]) -> str:
    """``num_steps``: the trial's own, which follows from its batch size in a sample budget; ``cut``:
    the folder names of the trials an interrupt stopped."""
    if result.error is not None:
        return "error"
    if Path(result.path).name in cut:
        return "interrupted"
    num_steps = (result.config or {}).get("optim.num_steps", num_steps)
    return "stopped early" if (result.metrics or {}).get("step", 0) < num_steps else "finished"


def _last_line(error) -> str:
    """The exception's own message, the last line of Ray's wrapped traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value) if value != "" else '""'


def summarise(grid, num_steps: int, batch_size: int, workers: int = 1, cut: set[str] = frozenset()) -> dict:
    """Rows per trial (status, steps, samples, best Dice, parameters), the Markdown table, the best trial.
    ``cut``: the folder names of the trials an interrupt stopped (a rerun resumes them).

    Samples (steps x the trial's batch size x its workers) measure what a trial cost in data passes:
    trials sample their batch size, so steps alone undercount the large-batch ones."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        dice = metrics.get("best_val_dice")
        checkpoint = metrics.get("checkpoint_path")
        params = dict(result.config or {})
        steps = metrics.get("step", 0)
        rows.append({"trial_id": metrics.get("trial_id") or Path(result.path).name,
                     "status": _status(result, num_steps, cut), "steps": steps,
                     "samples": steps * params.get("optim.batch_size", batch_size) * workers,
                     "best_val_dice": dice if isinstance(dice, float) and math.isfinite(dice) and dice >= 0 else None,
                     "error": _last_line(result.error) if result.error is not None else None,
                     "model": f"{str(checkpoint).rstrip('/')}/{MODEL_FILE}" if checkpoint else None,  # a path or a URI
                     "params": params})
    rows.sort(key=lambda r: r["trial_id"])
    scored = [r for r in rows if r["status"] != "error" and r["best_val_dice"] is not None]
    best = max(scored, key=lambda r: r["best_val_dice"], default=None)
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", "status", "steps", "samples", "best Dice", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dice = f"{r['best_val_dice']:.4f}" if r["best_val_dice"] is not None else "-"
        mark = " (best)" if best is r else ""
        lines.append("| " + " | ".join([r["trial_id"] + mark, r["status"], str(r["steps"]), str(r["samples"]), dice,
                                        *(_format(r["params"].get(k, "")) for k in keys)]) + " |")
    return {"rows": rows, "best": best, "markdown": "\n".join(lines) + "\n",
            "early_stopped": sum(r["status"] == "stopped early" for r in rows),
            "errored": sum(r["status"] == "error" for r in rows),
            "interrupted": sum(r["status"] == "interrupted" for r in rows),
            "trial_steps": sum(r["steps"] for r in rows), "trial_samples": sum(r["samples"] for r in rows)}
