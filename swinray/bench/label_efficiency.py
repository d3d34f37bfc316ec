"""Label efficiency: validation Dice against the fraction of labelled training cases, scratch vs SSL weights.

Every arm (``scratch``, then one per ``pretrained`` file) fine-tunes with the same preset, split,
seed and step budget at each fraction; smaller fractions are subsets of larger ones (``split_cases``).
Runs are ``<out_dir>/label_efficiency/<arm>-f<fraction>``: running the bench again resumes unfinished
runs and reuses finished ones. A run that fails is reported in the table and the others go on.

    python -m platform.bench label-efficiency --data ../shared/data/Task04_Hippocampus \\
        --pretrained outputs/ssl-openkbp/encoder.pt --fractions 0.1,0.25,1.0
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from swinray.config import BenchConfig, ConfigError, FinetuneConfig, apply_overrides
from swinray.presets import preset
from swinray.resolve import locate_pretrained
from swinray.storage import local_file, write_json
from swinray.train.finetune import run_finetune

SCRATCH = "scratch"


def arms(pretrained: tuple[str, ...]) -> list[tuple[str, str]]:
    """(arm name, encoder file) pairs, scratch first; a pretraining run's encoder.pt is named after its run."""
    out, seen = [(SCRATCH, "")], {SCRATCH}
    for path in pretrained:
        file = local_file(path)            # an s3:// encoder: downloaded
        if not file.is_file():
            raise ConfigError(f"pretrained={path}: no such encoder file")
        name = file.parent.name if file.stem == "encoder" and file.parent.name else file.stem
        while name in seen:
            name += "+"
        seen.add(name)
        out.append((name, locate_pretrained(path)))
    return out


def run_config(cfg: BenchConfig, arm: str, encoder: str, fraction: float) -> FinetuneConfig:
    """The fine-tuning config of one arm at one fraction; only the weights and the fraction differ."""
    base = preset(FinetuneConfig, cfg.finetune_preset)
    base = replace(base, data=cfg.data, run=replace(base.run, name=f"{arm}-f{fraction:g}",
                                                    storage=str(Path(cfg.out_dir) / "label_efficiency"),
                                                    ray_address=cfg.run.ray_address))
    overrides = {"seg.pretrained": encoder, "split.label_fraction": fraction}
    if cfg.budget_steps:
        overrides["optim.num_steps"] = cfg.budget_steps
    return apply_overrides(base, overrides)


def _train_seconds(metrics_log: str) -> float | None:
    rows = [json.loads(line) for line in Path(metrics_log).read_text().splitlines() if line.strip()]
    return rows[-1].get("elapsed_s") if rows else None


def markdown_table(rows: list[dict], arm_names: list[str]) -> str:
    """Fractions down, arms across: best validation Dice (per class), and each arm's gain over scratch."""
    fractions = sorted({r["fraction"] for r in rows})
    by_key = {(r["arm"], r["fraction"]): r for r in rows}
    gains = [a for a in arm_names if a != SCRATCH]
    head = ["fraction", "training cases", *arm_names, *(f"{a} - scratch" for a in gains)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fractions:
        cells = [f"{f:g}", str(next((r["training_cases"] for r in rows if r["fraction"] == f
                                     and r.get("training_cases")), "?"))]
        for arm in arm_names:
            r = by_key.get((arm, f), {})
            if r.get("dice") is None:
                cells.append(f"failed: {r.get('error', 'not run')[:120]}")
            else:
                per_class = ", ".join(f"{v:.3f}" for v in r["dice_per_class"].values())
                cells.append(f"{r['dice']:.4f} ({per_class})")
        for arm in gains:
            ours, scratch = by_key.get((arm, f), {}).get("dice"), by_key.get((SCRATCH, f), {}).get("dice")
            cells.append(f"{ours - scratch:+.4f}" if ours is not None and scratch is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], arm_names: list[str], title: str, path: Path) -> Path:
    """Dice against label fraction, one line per arm, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for arm in arm_names:
        points = sorted((r["fraction"], r["dice"]) for r in rows if r["arm"] == arm and r.get("dice") is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=arm)
    fractions = sorted({r["fraction"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("fraction of labelled training cases")
    ax.set_ylabel("best validation Dice (mean foreground)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bench_label_efficiency(cfg: BenchConfig, log=print) -> dict:
    fractions = sorted(set(cfg.fractions))     # BenchConfig checked them
    arm_list = arms(cfg.pretrained)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for fraction in fractions:
        for arm, encoder in arm_list:
            run_cfg = run_config(cfg, arm, encoder, fraction)
            log(f"label efficiency: {arm} at fraction {fraction:g} ({run_cfg.optim.num_steps} steps, "
                f"seed {run_cfg.run.seed}) -> {run_cfg.run.name}")
            row = {"arm": arm, "pretrained": encoder or None, "fraction": fraction, "run": run_cfg.run.name}
            try:
                summary = run_finetune(run_cfg, log)
            except Exception as e:  # one failed run is a row in the table, not the end of the bench
                log(f"label efficiency: {arm} at fraction {fraction:g} failed: {type(e).__name__}: {e}")
                rows.append({**row, "dice": None, "error": f"{type(e).__name__}: {e}"})
                continue
            rows.append({**row, "dice": summary["best_val_dice"], "dice_per_class": summary["val_dice_per_class"],
                         "best_step": summary["best_step"], "steps": summary["steps"],
                         "training_cases": summary["num_training_cases"],
                         "validation_cases": summary["num_validation_cases"],
                         "train_seconds": _train_seconds(summary["metrics_log"]), "model": summary["model"],
                         "task": summary["task"]})
            log(f"label efficiency: {arm} at fraction {fraction:g}: Dice {summary['best_val_dice']:.4f}")
    names = [a for a, _ in arm_list]
    task = next((r["task"] for r in rows if r.get("task")), cfg.data.task)
    table = markdown_table(rows, names)
    log("label efficiency (best validation Dice):\n" + table)
    (out_dir / "label_efficiency.md").write_text(table)
    png = plot(rows, names, f"{task}: {cfg.finetune_preset}, "
               f"{rows[0].get('steps') or cfg.budget_steps} steps per run", out_dir / "label_efficiency.png")
    failed = [r for r in rows if r.get("dice") is None]
    result = {"command": "bench", "target": "label-efficiency", "task": task, "preset": cfg.finetune_preset,
              "fractions": fractions, "arms": names, "runs": len(rows), "failed": len(failed),
              "dice": {arm: {f"{r['fraction']:g}": r.get("dice") for r in rows if r["arm"] == arm} for arm in names},
              "table": str(out_dir / "label_efficiency.md"), "plot": str(png),
              "results": str(out_dir / "label_efficiency.json"), "ok": not failed}
    write_json(out_dir / "label_efficiency.json", {**result, "rows": rows})
    return result
