"""Clean up after a stopped trial: Tune kills it, but its workers' placement group stays.

When ASHA stops a trial, Tune kills the trial's actor and with it the Train controller, before the
controller can remove its workers' placement group. Ray Train's own cleaner actor needs the State
API, which only a cluster with its dashboard serves (``runtime.pin_own_cluster`` points it at the
right one); without it the reserved CPUs would starve every later trial. Rank 0 records the group's
id in the trial's run folder, and this callback, in the sweep's driver, removes it when the trial ends.

(A killed trial leaves no Aim run open: workers never write to Aim, the driver's writer does, see
``swinray.aim_mirror``.)
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from swinray.storage import fetch
from swinray.train.finetune_loop import PLACEMENT_GROUP_FILE


class FreeTrialWorkers(Callback):
    def __init__(self, trials_dir: str):
        self.trials_dir = Path(trials_dir)

    def _free(self, trial) -> None:
        run_dir = self.trials_dir / trial.trial_id
        try:  # a callback that raises aborts the sweep: tracking and cleanup only ever warn
            from ray._raylet import PlacementGroupID
            if fetch(run_dir / PLACEMENT_GROUP_FILE):
                group_id = bytes.fromhex((run_dir / PLACEMENT_GROUP_FILE).read_text().strip())
                group = PlacementGroup(PlacementGroupID(group_id))
                if placement_group_table(group).get("state") not in (None, "REMOVED"):
                    remove_placement_group(group)
        except Exception as e:
            warnings.warn(f"could not free the workers of trial {trial.trial_id}: {e}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._free(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._free(trial)
