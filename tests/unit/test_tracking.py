"""Tracking: rank 0 records metrics and pictures in the run's folder, and the driver's writer process
copies them into a local Aim repo while the run goes on; nothing but that process writes to Aim.
A resumed run continues its Aim run, and any failure of Aim (its repo deleted mid-run, a run held by
another process, the writer gone) is one warning and ``aim_error``, never a stopped or hanging run."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from aim import Repo, Run

from conftest import REPO
from swinray.aim_mirror import AimMirror, mirror_to_aim
from swinray.aim_writer import CURSOR_FILE
from swinray.storage import local_path, read_remote_bytes, write_json
from swinray.tracking import Tracker, aim_ui_command

POLL_S = 0.2
pytestmark = pytest.mark.timeout(300)


def run_folder(root: Path, name: str, experiment: str, lr: float = 1e-3) -> Path:
    """A run's folder as the driver leaves it before training: its resolved config."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"optim": {"lr": lr}, "run": {"name": name, "experiment": experiment}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def wait_for(condition, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def aim_hash(run_dir: Path) -> str | None:
    cursor = run_dir / CURSOR_FILE
    return json.loads(cursor.read_text())["hash"] if cursor.exists() else None


def latest(repo: Path, run_hash: str) -> dict[str, tuple[int, float]]:
    """name -> (last step, last value) of a run in progress, read as `aim up` reads one: from the run's
    own metadata, through a Repo of its own (Aim's shared ones keep a database as first read)."""
    meta = Repo(str(repo)).request_tree("meta", run_hash, read_only=True, skip_read_optimization=True)
    traces = meta.subtree(("meta", "chunks", run_hash)).get("traces", {}) or {}
    return {name: (t["last_step"], t["last"]) for by_name in traces.values() for name, t in by_name.items()
            if "last_step" in t and "last" in t}      # a trace the writer is still adding has neither yet


def curve(repo: Path, run_hash: str, name: str, context: dict | None = None) -> dict[int, float]:
    """step -> value of a metric of a closed run."""
    from aim.storage.context import Context
    metric = Run(run_hash, repo=Repo(str(repo)), read_only=True).get_metric(name, Context(context or {}))
    if metric is None:
        return {}
    steps, (values, *_) = metric.data.numpy()
    return {int(s): float(v) for s, v in zip(steps, values)}


def test_a_run_is_in_aim_while_it_trains_with_its_config_metrics_contexts_and_pictures(tmp_path):
    run_dir = run_folder(tmp_path / "runs", "finetune-a", "exp-a")
    repo = tmp_path / "aim"
    with mirror_to_aim(str(repo), runs=[run_dir], poll_s=POLL_S) as mirror:
        run_hash = wait_for(lambda: aim_hash(run_dir))           # opened before the first step
        tracker = Tracker(run_dir, resumed_at=0)
        tracker.log({"loss": 1.0, "val_dice": 0.2}, step=1)
        wait_for(lambda: len(latest(repo, run_hash)) == 2)
        assert latest(repo, run_hash) == {"loss": (1, 1.0), "val_dice": (1, 0.2)}    # live: the run goes on
        tracker.log({"loss": 0.5, "val_dice": float("nan")}, step=2)
        tracker.log({"loss": 0.25, "val_dice": 0.6}, step=3)
        tracker.log({"dice": 0.7}, step=3, context={"subset": "test"})
        tracker.log_image("val_overlay_0", np.full((6, 10, 3), 200, np.uint8), step=3, caption="truth | prediction")
        tracker.close()
    assert mirror.aim_error is None and mirror.process.returncode == 0

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3, 3] and logged[0]["time"] <= logged[1]["time"]
    run = Repo.from_path(str(repo)).get_run(run_hash)                # closed and indexed: the SDK finds it
    assert run.active is False and (run.name, run.experiment) == ("finetune-a", "exp-a")
    assert run["hparams"] == json.loads((run_dir / "config.json").read_text())
    assert curve(repo, run_hash, "loss") == {1: 1.0, 2: 0.5, 3: 0.25}
    assert curve(repo, run_hash, "val_dice") == {1: 0.2, 3: 0.6}     # the NaN is kept out of Aim
    assert curve(repo, run_hash, "dice", {"subset": "test"}) == {3: 0.7}
    (images,) = Repo.from_path(str(repo)).query_images("images.name == 'val_overlay_0'", report_mode=0).iter()
    picture = images.data.values_list()[0][0]
    assert picture.to_pil_image().size == (10, 6) and picture.caption == "truth | prediction"
    assert np.asarray(picture.to_pil_image()).max() == 200


def test_a_resumed_run_continues_its_aim_run_and_redone_steps_are_there_once(tmp_path):
    run_dir = run_folder(tmp_path / "runs", "pretrain-b", "exp-b")
    repo = tmp_path / "aim"
    with mirror_to_aim(str(repo), runs=[run_dir], poll_s=POLL_S):
        tracker = Tracker(run_dir, resumed_at=0)
        for step in (1, 2, 3):
            tracker.log({"loss": 1.0 / step}, step)
        tracker.log_image("views", np.zeros((4, 4, 3), np.uint8), step=3)
        tracker.close()                                                  # killed after step 3; checkpoint at 2
    first = aim_hash(run_dir)
    with mirror_to_aim(str(repo), runs=[run_dir], poll_s=POLL_S) as mirror:   # the rerun, a new driver
        tracker = Tracker(run_dir, resumed_at=2)
        for step in (3, 4):
            tracker.log({"loss": 0.1 * step}, step)
        tracker.close()
    assert mirror.aim_error is None and aim_hash(run_dir) == first
    assert Repo.from_path(str(repo)).list_all_runs() == [first]
    assert curve(repo, first, "loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 0.3, 4: 0.4})
    assert [json.loads(line)["step"] for line in (run_dir / "images.jsonl").read_text().splitlines()] == []


def test_a_repo_deleted_mid_run_sets_aim_error_warns_once_and_the_run_ends(tmp_path):
    run_dir = run_folder(tmp_path / "runs", "finetune-c", "exp-c")
    repo = tmp_path / "aim"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mirror_to_aim(str(repo), runs=[run_dir], poll_s=POLL_S) as mirror:
            tracker = Tracker(run_dir, resumed_at=0)
            tracker.log({"loss": 1.0}, step=1)
            run_hash = wait_for(lambda: aim_hash(run_dir))
            wait_for(lambda: latest(repo, run_hash))
            shutil.rmtree(repo)                                  # the tracking is gone; Aim itself says nothing
            for step in (2, 3, 4):
                tracker.log({"loss": 1.0 / step}, step)
            wait_for(lambda: mirror.aim_error)
            tracker.close()
            failed = time.monotonic()
        assert time.monotonic() - failed < 5 and mirror.process.returncode is not None   # nothing left hanging
    assert "was deleted or moved" in mirror.aim_error and str(repo) in mirror.aim_error
    assert [str(w.message).split(" (")[0] for w in caught if issubclass(w.category, RuntimeWarning)] == [
        "Aim tracking is off for the rest of this run"]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_a_run_held_by_another_process_is_an_aim_error(tmp_path):
    run_dir = run_folder(tmp_path / "runs", "finetune-d", "exp-d")
    repo = tmp_path / "aim"
    with mirror_to_aim(str(repo), runs=[run_dir], poll_s=POLL_S):
        pass
    held = Run(aim_hash(run_dir), repo=str(repo), system_tracking_interval=None, capture_terminal_logs=False)
    messages = []
    with mirror_to_aim(str(repo), runs=[run_dir], log=messages.append, poll_s=POLL_S) as mirror:
        Tracker(run_dir).log({"loss": 1.0}, step=1)
    held.close()
    assert "lock" in mirror.aim_error.lower() and len(messages) == 1 and messages[0].startswith("warning: Aim")


def test_a_sweeps_trials_are_found_as_they_start_and_an_ended_trials_run_is_closed(tmp_path):
    trials = tmp_path / "trials"
    repo = tmp_path / "aim"
    mirror = AimMirror(str(repo), poll_s=POLL_S)
    mirror.follow_folder(trials, idle_close_s=1.0)
    try:
        first = run_folder(trials, "trial_1", "sweep-e", lr=1e-3)
        Tracker(first).log({"val_dice": 0.4}, step=1)
        second = run_folder(trials, "trial_2", "sweep-e", lr=1e-2)
        Tracker(second).log({"val_dice": 0.5}, step=1)
        wait_for(lambda: aim_hash(first) and aim_hash(second))
        wait_for(lambda: Repo.from_path(str(repo)).get_run(aim_hash(first)))   # idle: closed and indexed
        Tracker(first).log({"val_dice": 0.6}, step=2)                           # it goes on: opened again
        wait_for(lambda: latest(repo, aim_hash(first)).get("val_dice") == (2, 0.6))
    finally:
        mirror.close()
    runs = {run.name: run for run in Repo.from_path(str(repo)).iter_runs()}
    assert sorted(runs) == ["trial_1", "trial_2"] and {r.experiment for r in runs.values()} == {"sweep-e"}
    assert runs["trial_2"]["hparams"]["optim"]["lr"] == 1e-2 and not any(r.active for r in runs.values())
    assert curve(repo, aim_hash(first), "val_dice") == {1: 0.4, 2: 0.6}


def test_a_run_recorded_on_another_node_reaches_aim_through_object_storage(s3_bucket, tmp_path, monkeypatch):
    """Rank 0 on node A, the driver and its Aim repo on node B: nothing but the bucket between them."""
    runs = f"s3://{s3_bucket['bucket']}/runs"

    def on(node: str) -> Path:
        monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / node))
        return local_path(runs) / "finetune-g"

    write_json(on("node-a") / "config.json", {"run": {"name": "finetune-g", "experiment": "exp-g"}})
    tracker = Tracker(on("node-a"), resumed_at=0)
    tracker.log({"loss": 1.0}, step=1)
    tracker.log_image("val_overlay_0", np.zeros((4, 6, 3), np.uint8), step=1, caption="c")
    tracker.checkpointed()
    repo = tmp_path / "aim-on-b"
    with mirror_to_aim(str(repo), runs=[on("node-b")], poll_s=POLL_S) as mirror:
        run_hash = json.loads(wait_for(lambda: read_remote_bytes(on("node-b") / CURSOR_FILE)))["hash"]
        wait_for(lambda: latest(repo, run_hash).get("loss") == (1, 1.0))   # read from the bucket, live
        on("node-a")
        tracker.log({"loss": 0.5}, step=2)
        tracker.close()                                  # uploaded as the run ends; the driver's last copy reads it
        on("node-b")
    assert mirror.aim_error is None
    assert curve(repo, run_hash, "loss") == {1: 1.0, 2: 0.5}
    (images,) = Repo.from_path(str(repo)).query_images("images.name == 'val_overlay_0'", report_mode=0).iter()
    assert images.data.values_list()[0][0].to_pil_image().size == (6, 4)


KILLED_DRIVER = """
import json, os, sys, time
from pathlib import Path
from swinray.aim_mirror import AimMirror
from swinray.tracking import Tracker
run_dir = Path(sys.argv[1])
mirror = AimMirror(sys.argv[2], poll_s=0.2)
mirror.follow(run_dir)
Tracker(run_dir).log({"loss": 0.5}, step=1)
while not (run_dir / "aim_run.json").exists():
    time.sleep(0.1)
print(mirror.process.pid, flush=True)
os._exit(9)                                    # the driver is killed: it never closes the mirror
"""


def test_the_writer_of_a_killed_driver_finishes_the_copy_and_closes_the_run(tmp_path):
    run_dir = run_folder(tmp_path / "runs", "finetune-f", "exp-f")
    repo = tmp_path / "aim"
    out = subprocess.run([sys.executable, "-c", KILLED_DRIVER, str(run_dir), str(repo)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    writer = int(out.stdout.split()[-1])
    wait_for(lambda: not Path(f"/proc/{writer}").exists() or "Z" in Path(f"/proc/{writer}/stat").read_text().split()[2])
    run = Repo.from_path(str(repo)).get_run(aim_hash(run_dir))
    assert run.active is False and curve(repo, run.hash, "loss") == {1: 0.5}


def test_the_aim_ui_command_opens_the_local_repo_on_loopback():
    command = aim_ui_command("/runs")
    aim, rest = command.split(" ", 1)
    assert rest == "up --repo /runs --host 127.0.0.1"
    assert Path(aim).is_absolute() and os.access(aim, os.X_OK)      # works as printed, no venv activated


def test_a_resumed_run_drops_the_lines_of_the_steps_it_redoes_so_each_step_is_logged_once(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))   # died at 5
    tracker = Tracker(tmp_path, resumed_at=3)                          # its checkpoint was step 3
    tracker.log({"loss": 0.1}, 4)
    tracker.close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_only_the_writer_process_and_the_report_use_aim():
    """Workers and drivers record to files; Aim is opened by the writer process (and read by the
    report) only, so no other process holds an Aim run or talks to an Aim server."""
    users = sorted(str(path.relative_to(REPO)) for path in (REPO / "swinray").rglob("*.py")
                   if re.search(r"^\s*(from aim[ .]|import aim\b)", path.read_text(), re.MULTILINE))
    assert users == ["swinray/aim_writer.py", "swinray/report/runs.py"]
