"""An Aim experiment's runs as plain records: hyperparameters and metric curves.

Runs are opened one by one from their own storage (``Run(hash, read_only=True)``), not through
Aim's query index, so a closed run that was never indexed is still reported. A run that is still
open (training, or killed and not yet closed) shows no data to a reader: it is listed as active.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from swinray.config import ConfigError

SYSTEM_METRIC_PREFIX = "__system__"


@dataclass
class RunRecord:
    hash: str
    name: str
    params: dict                                    # hparams, flattened to dotted keys
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)   # name -> (steps, values)
    active: bool = False                            # still open: its data is not readable yet

    def best(self, metric: str) -> tuple[int, float] | None:
        """(step, value) of the highest finite value of ``metric``, or None if it was never logged."""
        steps, values = self.curves.get(metric, ([], []))
        finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
        if not finite:
            return None
        value, step = max(finite)
        return step, value

    def at(self, metric: str, step: int) -> float | None:
        steps, values = self.curves.get(metric, ([], []))
        return values[steps.index(step)] if step in steps else None


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def read_experiment(repo_path: str, experiment: str) -> list[RunRecord]:
    """Every run of ``experiment`` in the Aim repo at ``repo_path``, a folder (never an Aim server:
    Aim 3.29's clients trust what a server sends)."""
    from aim import Repo, Run
    if "://" in repo_path:
        raise ConfigError(f"aim_repo={repo_path}: a folder holding .aim is read, not an Aim server")
    if not Repo.exists(repo_path):
        raise ConfigError(f"aim_repo={repo_path}: no Aim repository there (it holds a .aim folder once a run "
                          "has been tracked)")
    repo = Repo.from_path(repo_path)
    runs, seen = [], set()
    for run_hash in repo.list_all_runs():
        run = Run(run_hash, repo=repo_path, read_only=True)
        seen.add(run.experiment or "")
        if run.experiment != experiment:
            continue
        curves = {}
        for metric in run.metrics():
            if metric.name.startswith(SYSTEM_METRIC_PREFIX) or metric.context.to_dict():
                continue
            steps, (values, *_) = metric.data.numpy()
            curves[metric.name] = ([int(s) for s in steps], [float(v) for v in values])
        params = flatten(run.get("hparams") or {})
        name = run.name if run.name and run.name != f"Run: {run_hash}" else params.get("run.name") or run_hash
        runs.append(RunRecord(run_hash, name, params, curves, bool(run.active)))
    if not runs:
        raise ConfigError(f"experiment={experiment!r}: no runs of that name in {repo_path}; experiments there: "
                          f"{', '.join(sorted(seen)) or 'none'}")
    return sorted(runs, key=lambda r: r.name)


def varying_params(runs: list[RunRecord]) -> list[str]:
    """The hyperparameters that differ between runs: what a sweep sampled."""
    keys = sorted({k for r in runs for k in r.params})
    return [k for k in keys if len({repr(r.params.get(k)) for r in runs}) > 1]
