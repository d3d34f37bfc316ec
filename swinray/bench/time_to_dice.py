"""Time to Dice on MSD Hippocampus: the plain MONAI baseline against our fine-tuning, one after the other.

The baseline (``../shared/baselines/hippo_monai_baseline.py``: SwinUNETR feature size 12, whole
volumes padded to 64^3, batch 2) trains for ``budget_minutes`` and prints its validation Dice every
2 epochs; ours runs ``finetune --preset cpu-hippocampus`` on the same split (every 5th case, listed order)
for half that budget. Both clocks start after data loading. The target is the baseline's final
Dice; each side's time to it is the first time its validation reached it, charging each side its
own validations once (a Dice counts from the moment it is known). The headline
``time_to_target_ratio`` is the baseline's time over ours.

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
    """The baseline's printed log -> its Dice curve [{"t_s", "step", "dice"}] and its final point.

    Each point is timed when its Dice was known. ``epoch E step S t=Ts`` is printed before that
    epoch's validation (and ``t`` includes every earlier one); ``FINAL ... train_s=T eval_s=E`` says
    when training stopped and how long the final evaluation of the same cases took after it. So a
    validation's Dice is known ``eval_s`` after its epoch line, and the final one at ``T + E``."""
    pending, final, last_epoch = [], {}, None
    for line in lines:
        if m := _EPOCH.match(line):
            last_epoch = {"step": int(m[1]), "t_s": float(m[2])}
        elif (m := _VAL.match(line)) and last_epoch:
            values = [float(v) for v in m[1].split(",")]
            pending.append({**last_epoch, "dice": sum(values) / len(values)})
        elif m := _FINAL.match(line):
            eval_s = float(m[3])
            final = {"step": int(m[1]), "t_s": float(m[2]) + eval_s, "dice": float(m[5]), "eval_s": eval_s}
    if not final:
        return [], {}
    curve = [{**p, "t_s": p["t_s"] + final["eval_s"]} for p in pending]
    return [*curve, {k: final[k] for k in ("step", "t_s", "dice")}], final


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


def curve_of_run(rows: list[dict]) -> list[dict]:
    """Our metrics log -> the Dice curve: ``elapsed_s`` of a validated step is taken after its validation."""
    return [{"t_s": r["elapsed_s"], "step": r["step"], "dice": r["val_dice"]} for r in rows if "val_dice" in r]


def time_to_reach(curve: list[dict], dice: float) -> float | None:
    """The first time a curve reaches ``dice``; None if it never does."""
    return next((p["t_s"] for p in curve if p["dice"] >= dice), None)


def compare(baseline_curve: list[dict], baseline_final: dict, ours_curve: list[dict]) -> dict:
    """Each side's first time to the baseline's final Dice and the ratio baseline / ours."""
    target = baseline_final["dice"]             # printed to 4 decimals: so is every Dice compared with it
    baseline_s, ours_s = (time_to_reach([{**p, "dice": round(p["dice"], 4)} for p in curve], target)
                          for curve in (baseline_curve, ours_curve))
    return {"target_dice": target, "baseline_seconds_to_target": baseline_s, "ours_seconds_to_target": ours_s,
            "time_to_target_ratio": round(baseline_s / ours_s, 2) if ours_s else None,
            "baseline_seconds_total": baseline_final["t_s"]}


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
    ours_curve = curve_of_run([json.loads(line) for line in open(summary["metrics_log"])])
    figures = compare(baseline_curve, baseline_final, ours_curve)
    result = {"command": "bench", "target": "time-to-dice", "budget_minutes": cfg.budget_minutes,
              "baseline_log": cfg.baseline_log or str(Path(cfg.out_dir) / "baseline.log"), **figures,
              "ours_best_val_dice": summary["best_val_dice"], "ours_val_dice_per_class": summary["val_dice_per_class"],
              "ours_total_seconds_with_ray_and_preprocessing": round(total_s, 1),
              "baseline_curve": baseline_curve, "ours_curve": ours_curve, "ours_model": summary["model"]}
    for name, curve in (("baseline", baseline_curve), ("ours", ours_curve)):
        log(f"{name}: " + ", ".join(f"{p['t_s'] / 60:.1f} min {p['dice']:.4f}" for p in curve))
    reached = figures["ours_seconds_to_target"]
    log(f"target: the baseline's final validation Dice {figures['target_dice']:.4f}, first reached after "
        f"{figures['baseline_seconds_to_target'] / 60:.1f} min; ours "
        + (f"after {reached / 60:.1f} min: ratio {figures['time_to_target_ratio']}" if reached
           else "does not reach it"))
    write_json(Path(cfg.out_dir) / "time_to_dice.json", result)
    return result
