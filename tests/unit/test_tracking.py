"""Tracking: every metric goes to the JSON-lines log, and a closed Aim run is at once queryable
through Aim's SDK (Aim 3.29 only indexes runs inside `aim up` otherwise)."""
import json

import pytest

from aim import Repo

from swinray.tracking import Tracker


def test_a_closed_run_is_queryable_with_its_hyperparameters_and_metrics(tmp_path):
    tracker = Tracker(tmp_path / "metrics.jsonl", str(tmp_path / "aim"), "sweep-a", params={"optim.lr": 1e-3})
    for step in (1, 2, 3):
        tracker.log({"loss": 1.0 / step, "val_dice": float("nan") if step == 2 else 0.2 * step}, step=step)
    tracker.close()

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3]
    repo = Repo.from_path(str(tmp_path / "aim"))
    run = repo.get_run(tracker.run_hash)
    assert run is not None and run.active is False and run.experiment == "sweep-a"
    assert run["hparams"] == {"optim.lr": 1e-3}
    (dice,) = [m for m in repo.query_metrics("metric.name == 'val_dice'").iter()]
    assert dice.values.values_list() == pytest.approx([0.2, 0.6])     # the NaN is kept out of Aim
    assert tracker.aim_error is None
