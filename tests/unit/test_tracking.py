"""Tracking: every metric goes to the JSON-lines log, and a closed Aim run is at once queryable
through Aim's SDK (Aim 3.29 only indexes runs inside `aim up` otherwise); the run of a killed
process (a trial ASHA stopped) can be closed afterwards."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aim import Repo

from conftest import REPO
from swinray.tracking import Tracker, aim_ui_command, close_abandoned_run


def test_a_closed_run_is_queryable_with_its_hyperparameters_and_metrics(tmp_path):
    tracker = Tracker(tmp_path / "metrics.jsonl", str(tmp_path / "aim"), "sweep-a", params={"optim.lr": 1e-3})
    for step in (1, 2, 3):
        tracker.log({"loss": 1.0 / step, "val_dice": float("nan") if step == 2 else 0.2 * step}, step=step)
    tracker.close()

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3]
    assert logged[0]["time"] <= logged[1]["time"] <= logged[2]["time"]     # wall clock, for step timing
    repo = Repo.from_path(str(tmp_path / "aim"))
    run = repo.get_run(tracker.run_hash)
    assert run is not None and run.active is False and run.experiment == "sweep-a"
    assert run["hparams"] == {"optim.lr": 1e-3}
    (dice,) = [m for m in repo.query_metrics("metric.name == 'val_dice'").iter()]
    assert dice.values.values_list() == pytest.approx([0.2, 0.6])     # the NaN is kept out of Aim
    assert tracker.aim_error is None


KILLED_MID_RUN = """
import os, sys
from swinray.tracking import Tracker
tracker = Tracker(sys.argv[1] + "/metrics.jsonl", sys.argv[1] + "/aim", "sweep-b")
tracker.log({"val_dice": 0.5}, step=1)
print(tracker.run_hash, flush=True)
os._exit(9)                                    # killed: the run is never closed
"""


def test_the_run_of_a_killed_process_is_closed_afterwards_and_a_finished_one_is_left_alone(tmp_path):
    out = subprocess.run([sys.executable, "-c", KILLED_MID_RUN, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    run_hash = out.stdout.strip().splitlines()[-1]
    repo = str(tmp_path / "aim")
    assert Repo.from_path(repo).get_run(run_hash) is None          # unindexed: invisible to the SDK
    assert close_abandoned_run(repo, run_hash) is True
    run = Repo.from_path(repo).get_run(run_hash)
    assert run.active is False and run.experiment == "sweep-b"
    assert [m.values.values_list() for m in run.metrics() if m.name == "val_dice"] == [[0.5]]
    ended = run.end_time
    assert close_abandoned_run(repo, run_hash) is True              # ended now: left alone
    assert Repo.from_path(repo).get_run(run_hash).end_time == ended


def test_the_aim_ui_command_opens_a_repo_on_disk_and_points_at_the_heads_ui_for_a_server():
    local = aim_ui_command("/runs/.aim")
    aim, rest = local.split(" ", 1)
    assert rest == "up --repo /runs/.aim --host 127.0.0.1"
    assert Path(aim).is_absolute() and os.access(aim, os.X_OK)      # works as printed, no venv activated
    remote = aim_ui_command("aim://10.0.0.5:53800")     # `aim up` cannot open a tracking server
    assert "aim up" not in remote and remote.startswith("ray attach cluster/gpu.yaml -p 43800")
    assert "aim://10.0.0.5:53800" in remote and "http://127.0.0.1:43800" in remote


def test_a_resumed_run_drops_the_lines_of_the_steps_it_redoes_so_each_step_is_logged_once(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))   # died at 5
    tracker = Tracker(log, None, "exp", resumed_at=3)                  # its checkpoint was step 3
    tracker.log({"loss": 0.1}, 4)
    tracker.close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
