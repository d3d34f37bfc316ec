"""``platform.report``: an Aim experiment (a sweep) as Markdown plus PNG plots, a file to share.

    python -m platform.report --aim-repo outputs --experiment sweep-hippocampus
"""
from __future__ import annotations

import math
from pathlib import Path

from swinray.config import ReportConfig
from swinray.report.plots import dice_curves, parallel_coordinates, per_class_bars
from swinray.report.runs import RunRecord, read_experiment, varying_params

NOT_HYPERPARAMETERS = {"run.name", "run.storage", "run.aim_repo", "run.experiment"}  # differ per run by design


def report_dir(cfg: ReportConfig) -> Path:
    return Path(cfg.out_dir or Path("outputs") / "reports" / (cfg.experiment or "unnamed"))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def _table(runs: list[RunRecord], params: list[str], metric: str, best: RunRecord | None) -> str:
    head = ["run", f"best {metric}", "at step", "last step", *params]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in sorted(runs, key=lambda r: -(r.best(metric) or (0, -math.inf))[1]):
        scored = run.best(metric)
        last = max((steps[-1] for steps, _ in run.curves.values() if steps), default=0)
        name = run.name + (" (best)" if run is best else "") + (" (active: no data yet)" if run.active else "")
        cells = [name, f"{scored[1]:.4f}" if scored else "-", str(scored[0]) if scored else "-", str(last),
                 *(_cell(run.params.get(p)) for p in params)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_report(cfg: ReportConfig, log=print) -> dict:
    runs = read_experiment(cfg.aim_repo, cfg.experiment)
    out = report_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    metric = cfg.metric
    readable = [r for r in runs if not r.active] or runs     # an open run shows no hyperparameters yet
    params = [p for p in varying_params(readable) if p not in NOT_HYPERPARAMETERS]
    validated = [r for r in runs if r.best(metric)]
    best = max(validated, key=lambda r: r.best(metric)[1], default=None)
    log(f"report {cfg.experiment}: {len(runs)} run(s), {len(validated)} with {metric}, "
        f"{len(params)} varying hyperparameter(s) -> {out}")

    plots, sections = [], []
    if validated:
        plots.append(dice_curves(validated, metric, out / f"{metric}_per_run.png"))
        sections.append(f"## {metric} per run over training\n\n![{metric} per run]({plots[-1].name})")
    if validated and params:
        plots.append(parallel_coordinates(readable, params, metric, out / "parallel_coordinates.png"))
        sections.append("## Hyperparameters against Dice\n\nOne line per run, coloured by its best "
                        f"{metric}; grey dashed lines never validated.\n\n![parallel coordinates]({plots[-1].name})")
    per_class = {}
    if best:
        step = best.best(metric)[0]
        per_class = {name[len(metric) + 1:]: best.at(name, step) for name in sorted(best.curves)
                     if name.startswith(metric + "_") and best.at(name, step) is not None}
    if per_class:
        plots.append(per_class_bars(list(per_class), list(per_class.values()),
                                    f"{best.name}: Dice per class at step {best.best(metric)[0]}",
                                    out / "best_run_per_class.png"))
        sections.append(f"## Dice per class of the best run ({best.name})\n\n![per class]({plots[-1].name})")

    summary_line = (f"Best run: **{best.name}** ({metric} {best.best(metric)[1]:.4f} at step {best.best(metric)[0]})."
                    if best else f"No run logged {metric}.")
    markdown = "\n\n".join([f"# Report: {cfg.experiment}",
                            f"Aim repository `{cfg.aim_repo}`, {len(runs)} run(s), {len(validated)} validated. "
                            + summary_line,
                            "## Runs\n\n" + _table(runs, params, metric, best), *sections]) + "\n"
    path = out / "report.md"
    path.write_text(markdown)
    log(f"report written to {path} ({len(plots)} plot(s))")
    return {"command": "report", "experiment": cfg.experiment, "runs": len(runs), "validated": len(validated),
            "active": sum(r.active for r in runs),
            "hyperparameters": params, "best_run": best.name if best else None,
            "best_dice": best.best(metric)[1] if best else None, "best_per_class": per_class,
            "report": str(path), "plots": [str(p) for p in plots], "ok": True}
