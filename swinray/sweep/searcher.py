"""Optuna inside Tune, with the failure cases made explicit, and the ASHA scheduler.

Ray 2.60's ``OptunaSearch`` tells Optuna a trial COMPLETE with its last validation Dice even when
the trial errored, its ``tell`` of a NaN only logs a warning (the trial stays RUNNING in the study
forever), and a result without the metric raises a KeyError. ``FailAwareOptunaSearch`` marks
errored and non-finite trials FAIL and ignores results that carry no validation Dice yet.
"""
from __future__ import annotations

import math
import warnings

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from swinray.sweep.budget import TrialBudget

METRIC = "val_dice"            # ASHA compares trials on the Dice at each rung
OBJECTIVE = "best_val_dice"    # Optuna learns from the best Dice a trial reached (its kept model's)


def _scored(value) -> bool:
    """A real Dice: finite and not the -1 a run reports before its first validation."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


class FailAwareOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if _scored(result.get(self.metric)):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = (result or {}).get(self.metric)
        if (error or (result and not _scored(value))) and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a third of the sweep, 2 to 10.

    Optuna's default of 10 would leave a sweep of 10 or fewer trials purely random (and, seeded
    alike, the very same trials as random search)."""
    return max(2, min(10, trials // 3))


def make_searcher(space, search: str, seed: int, trials: int = 30, points_to_evaluate: list[dict] | None = None):
    """TPE (seeded, multivariate) or seeded random sampling over a define-by-run space of ``trials`` trials."""
    with warnings.catch_warnings():  # group=True (conditional spaces) is "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = (optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              n_startup_trials=startup_trials(trials)) if search == "tpe"
                   else optuna.samplers.RandomSampler(seed=seed))
    return FailAwareOptunaSearch(space=space, metric=OBJECTIVE, mode="max", sampler=sampler,
                                 points_to_evaluate=points_to_evaluate)


def make_scheduler(kind: str, budget: TrialBudget, reduction_factor: int):
    """ASHA on the all-reduced validation Dice, rungs in training samples; or no early stopping."""
    if kind == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="samples", metric=METRIC, mode="max", max_t=budget.samples,
                         grace_period=budget.interval_samples, reduction_factor=reduction_factor,
                         stop_last_trials=False)  # a trial at max_t ends itself, not killed mid-checkpoint


def export_study(study: optuna.Study) -> list[dict]:
    """Every Optuna trial as a plain dict (number, state, value, params), for the sweep's JSON."""
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in study.trials]
