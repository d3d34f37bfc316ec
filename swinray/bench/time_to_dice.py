"""Time to Dice on MSD Hippocampus: the plain MONAI baseline against our fine-tuning, one after the other.

The baseline (``../shared/baselines/hippo_monai_baseline.py``: SwinUNETR feature size 12, whole
volumes padded to 64^3, batch 2) trains for ``budget_minutes`` and prints its validation Dice every
2 epochs; ours runs ``finetune --preset cpu-hippocampus`` on the same split (every 5th case, listed order)
for half that budget. Both clocks start after data loading and include validation. The ratio is
the baseline's time to its final Dice over the time we take to first reach that Dice.

    python -m platform.bench time-to-dice --data ../shared/data/Task04_Hippocampus --set budget_minutes=22
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from swinray.config import BenchConfig, ConfigError, FinetuneConfig, apply_overrides
from swinray.presets import preset
from swinray.storage import write_json
from swinray.train.finetune import run_finetune

BASELINE = Path(__file__).resolve().parents[2].parent / "shared" / "baselines" / "hippo_monai_baseline.py"
_EPOCH = re.compile(r"^epoch \d+ step (\d+) t=(\d+)s")
_VAL = re.compile(r"^val dice \[([^\]]*)\]")
_FINAL = re.compile(r"^FINAL steps=(\d+) train_s=(\d+) eval_s=(\d+) dice_ant_post=\[([^\]]*)\] mean=([\d.]+)")


def parse_baseline(lines) -> tuple[list[dict], dict]:
    """The baseline's printed log -> Dice curve [{"t_s", "step", "dice"}] and its final point."""
    curve, final, last_epoch = [], {}, None
    for line in lines:
        if m := _EPOCH.match(line):
            last_epoch = {"step": int(m[1]), "t_s": float(m[2])}
        elif (m := _VAL.match(line)) and last_epoch:
            values = [float(v) for v in m[1].split(",")]
            curve.append({**last_epoch, "dice": sum(values) / len(values)})
        elif m := _FINAL.match(line):
            final = {"step": int(m[1]), "t_s": float(m[2]) + float(m[3]), "dice": float(m[5])}
    if final:
        curve.append(final)
    return curve, final


def run_baseline(data: str, budget_s: float, log, log_path: Path) -> tuple[list[dict], dict]:
    if not BASELINE.exists():
        raise ConfigError(f"{BASELINE}: the MONAI baseline script is not there (it lives in ../shared/baselines)")
    log(f"baseline: {BASELINE.name} for {budget_s / 60:.1f} min")
    proc = subprocess.Popen([sys.executable, str(BASELINE), data, str(budget_s), "12"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(("val dice", "FINAL")):
            log(f"baseline: {line.strip()}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("\n".join(lines) + "\n")            # reusable with baseline_log=
    if proc.wait() != 0:
        raise RuntimeError("the MONAI baseline failed:\n" + "\n".join(lines[-20:]))
    return parse_baseline(lines)


def time_to_reach(curve: list[dict], dice: float) -> float | None:
    return next((p["t_s"] for p in curve if p["dice"] >= dice), None)


def bench_time_to_dice(cfg: BenchConfig, log=print) -> dict:
    if not cfg.data.source:
        raise ConfigError("bench time-to-dice needs --data pointing at MSD Task04_Hippocampus")
    budget_s = cfg.budget_minutes * 60
    if cfg.baseline_log:
        log(f"baseline: reusing {cfg.baseline_log}")
        baseline_curve, baseline_final = parse_baseline(Path(cfg.baseline_log).read_text().splitlines())
    else:
        baseline_curve, baseline_final = run_baseline(cfg.data.source, budget_s, log,
                                                      Path(cfg.out_dir) / "baseline.log")
    if not baseline_final:
        raise ConfigError("the baseline log has no FINAL line: it did not finish")
    ours_cfg = preset(FinetuneConfig, "cpu-hippocampus")
    ours_cfg = replace(ours_cfg, data=replace(cfg.data, max_cases=0), run=replace(
        ours_cfg.run, name=f"bench-time-to-dice-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=str(Path(cfg.out_dir) / "time_to_dice"),
        ray_address=cfg.run.ray_address))
    # The baseline's own split (validation = every 5th case, nothing held out): the same cases on both sides
    ours_cfg = apply_overrides(ours_cfg, {"split.shuffle": False, "split.num_folds": 5, "split.fold": 0,
                                          "split.test_fraction": 0.0, "seg.max_minutes": cfg.budget_minutes / 2})
    log(f"ours: finetune --preset cpu-hippocampus, at most {cfg.budget_minutes / 2:.1f} min of training")
    began = time.perf_counter()
    summary = run_finetune(ours_cfg, log)
    total_s = time.perf_counter() - began
    rows = [json.loads(line) for line in open(summary["metrics_log"])]
    ours_curve = [{"t_s": r["elapsed_s"], "step": r["step"], "dice": r["val_dice"]} for r in rows if "val_dice" in r]
    target = baseline_final["dice"]
    reached = time_to_reach(ours_curve, target)
    result = {"command": "bench", "target": "time-to-dice", "budget_minutes": cfg.budget_minutes,
              "baseline_log": cfg.baseline_log or str(Path(cfg.out_dir) / "baseline.log"),
              "baseline_final_dice": target, "baseline_seconds": baseline_final["t_s"],
              "ours_seconds_to_baseline_dice": reached,
              "ratio": round(baseline_final["t_s"] / reached, 2) if reached else None,
              "ours_best_dice": summary["best_val_dice"], "ours_dice_per_class": summary["val_dice_per_class"],
              "ours_total_seconds_with_ray_and_preprocessing": round(total_s, 1),
              "baseline_curve": baseline_curve, "ours_curve": ours_curve, "ours_model": summary["model"]}
    for name, curve in (("baseline", baseline_curve), ("ours", ours_curve)):
        log(f"{name}: " + ", ".join(f"{p['t_s'] / 60:.1f} min {p['dice']:.4f}" for p in curve))
    log(f"baseline reaches {target:.4f} in {baseline_final['t_s'] / 60:.1f} min; ours "
        + (f"in {reached / 60:.1f} min: ratio {result['ratio']}" if reached else "does not reach it"))
    write_json(Path(cfg.out_dir) / "time_to_dice.json", result)
    return result
