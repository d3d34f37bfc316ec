"""A sweep's progress for people: trials ended out of all, the best Dice so far (Tune's own
trial tables are switched off: they filled stdout, which belongs to the closing JSON line)."""
from __future__ import annotations

import math

from ray.tune import Callback

from swinray.progress import Progress

ENDED = ("TERMINATED", "ERROR")


class SweepProgress(Callback):
    def __init__(self, name: str, trials: int):
        self.name, self.trials = name, trials
        self.best = -math.inf
        self._progress: Progress | None = None

    def __getstate__(self):             # Tune saves its callbacks with the experiment; a bar is not state
        return {**self.__dict__, "_progress": None}

    def _show(self, trials) -> None:
        if self._progress is None:
            self._progress = Progress(self.trials, "trial", f"sweep {self.name}")
        ended = sum(t.status in ENDED for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        best = f"best val_dice {self.best:.4f}" if math.isfinite(self.best) else "no validation yet"
        self._progress.set(ended, f"{running} running, {best}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        dice = result.get("val_dice")
        if isinstance(dice, (int, float)) and math.isfinite(dice):
            self.best = max(self.best, dice)
        self._show(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._show(trials)

    on_trial_complete = on_trial_error = on_trial_start

    def on_experiment_end(self, trials, **info):
        if self._progress is not None:
            self._show(trials)
            self._progress.close()
            self._progress = None
