"""A sweep trial's budget in training samples, the same whatever batch size the trial samples.

Trials sample their batch size, so a budget in steps would let large-batch trials see several
times the data of small-batch ones: ASHA would compare them at unequal cost and the search would
drift towards large batches because they buy more data. Every trial therefore trains on the same
number of samples ("trial-epochs" up to the training-set size) and validates at equal sample
intervals, which are ASHA's time unit: its rungs fall on validations. Samples are counted across
all of a trial's Train workers: a step of W workers at batch B trains on W x B samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialBudget:
    interval_samples: int       # training samples between validations; ASHA's grace period
    validations: int            # per trial: reduction_factor ** rungs, the last one at the end
    workers: int = 1            # Train workers per trial, each drawing its own batch every step

    @property
    def samples(self) -> int:
        """ASHA's max_t: the samples of a whole trial."""
        return self.interval_samples * self.validations

    def val_every_steps(self, batch_size: int) -> int:
        """At least one step: a batch larger than the interval rounds the trial's budget up."""
        return max(1, math.ceil(self.interval_samples / (batch_size * self.workers)))

    def num_steps(self, batch_size: int) -> int:
        return self.val_every_steps(batch_size) * self.validations


def trial_budget(samples: int, reduction_factor: int, rungs: int, workers: int = 1) -> TrialBudget:
    """About ``samples`` per trial (all workers together), split into reduction_factor ** rungs equal
    validation intervals."""
    validations = reduction_factor ** rungs
    return TrialBudget(max(1, samples // validations), validations, workers)
