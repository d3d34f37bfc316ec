"""A debug sweep on the phantom, interrupted with Ctrl-C and finished by running the same command again.

Start points make the run deterministic where it matters: trial 1 (learning rate 1e6) diverges at
step 2 and must end failed in Tune and in Optuna; trial 2 trains normally; trial 3 (learning rate
2e6) collapses to Dice 0 after one step, below trial 2's, so ASHA stops it at its first rung before
it can diverge; trial 4 is interrupted after its first checkpoint and resumed by the second command.
(ASHA's rung records are not part of Tune's saved state, so its decisions are asserted before the
interruption.)
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from swinray.config import FinetuneConfig, load_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
NAME = "s"


def sweep_command(tmp: Path) -> list[str]:
    return [sys.executable, "-m", "platform.sweep", "--preset", "debug", "--name", NAME, "--trials", "4",
            "--set", f"storage={tmp / 'sweeps'}", "--set", f"start_points={tmp / 'start.json'}",
            "--set", f"finetune.data.phantom_dir={tmp / 'phantom'}", "--set", f"finetune.data.cache_dir={tmp / 'cache'}",
            "--set", f"finetune.run.storage={tmp / 'runs'}", "--set", "finetune.optim.num_steps=3"]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "start.json").write_text(json.dumps([{"optim.lr": 1e6}, {"optim.lr": 1e-3}, {"optim.lr": 2e6}, {"optim.lr": 5e-4}]))
    trials = tmp / "sweeps" / NAME / "trials"                   # Tune names trial n "run_trial_<id>_<n>_..."
    first = subprocess.Popen(sweep_command(tmp), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    interrupted_trial = None
    while time.monotonic() < deadline and first.poll() is None:   # Ctrl-C once trial 4 has a checkpoint
        fourth = [p.name.split("_")[2] for p in (tmp / "sweeps" / NAME / "tune").glob("run_trial_*_4_*")]
        if fourth and metrics_steps(trials / fourth[0]) and list((trials / fourth[0]).glob("checkpoint_*")):
            interrupted_trial = fourth[0]
            first.send_signal(signal.SIGINT)                    # Ctrl-C to the sweep command
            break
        time.sleep(0.5)
    log_first = first.communicate(timeout=300)[0]
    assert interrupted_trial, "the sweep never reached trial 4:\n" + log_first[-3000:]
    second = subprocess.run(sweep_command(tmp), cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert second.returncode in (0, 1), second.stderr[-3000:]
    result = json.loads(second.stdout.strip().splitlines()[-1])
    return tmp, result, interrupted_trial, second.stderr


def test_the_rerun_restores_the_sweep_and_resumes_the_interrupted_trial(sweep):
    tmp, result, interrupted, log = sweep
    assert "restoring" in log
    (summary,) = result["sweeps"]
    assert summary["trials"] == 4                              # not 5: the finished trial 1 is not redone
    assert len(list((tmp / "sweeps" / NAME / "trials").glob("*"))) == 4
    steps = metrics_steps(tmp / "sweeps" / NAME / "trials" / interrupted)
    assert steps.count(1) == 1 and max(steps) == 3              # continued from its checkpoint


def test_a_diverging_trial_fails_in_tune_and_in_optuna(sweep):
    tmp, result, _, _ = sweep
    record = json.loads((tmp / "sweeps" / NAME / "trials.json").read_text())
    states = [t["state"] for t in record["optuna_study"]]
    assert len(states) == 4 and states[0] == "FAIL" and "RUNNING" not in states
    first = record["optuna_study"][0]
    assert first["params"]["optim.lr"] == 1e6
    errored = [t for t in record["trials"] if t["status"] == "error"]
    assert len(errored) == 1 and "diverged at step 2" in errored[0]["error"]


def test_asha_stops_the_collapsed_trial_at_its_first_rung(sweep):
    tmp, result, _, _ = sweep
    trials = json.loads((tmp / "sweeps" / NAME / "trials.json").read_text())["trials"]
    collapsed = [t for t in trials if t["params"]["optim.lr"] == 2e6]
    assert [t["status"] for t in collapsed] == ["stopped early"] and collapsed[0]["steps"] == 1
    assert result["sweeps"][0]["early_stopped"] >= 1
    assert all(t["samples"] == t["steps"] * t["params"]["optim.batch_size"] for t in trials)   # what each cost
    assert result["sweeps"][0]["trial_samples"] == sum(t["samples"] for t in trials)


def test_every_trial_is_one_aim_run_in_the_sweeps_experiment(sweep):
    from aim import Repo, Run
    tmp, result, _, _ = sweep
    assert result["aim_repo"] == str(tmp / "runs")                 # where fine-tuning runs of this config go
    repo = Repo.from_path(result["aim_repo"])
    hashes = repo.list_all_runs()
    experiments = [Run(h, repo=result["aim_repo"], read_only=True).experiment for h in hashes]
    assert experiments == [NAME] * 4                                # the resumed trial kept its run
    # Closed runs are indexed, so Aim's query SDK (and `aim up`) sees them and their metrics
    assert sorted(run.hash for run in repo.iter_runs()) == sorted(hashes)
    assert all(run.active is False for run in repo.iter_runs())
    validated = {m.run.hash for m in repo.query_metrics("metric.name == 'val_dice'").iter()}
    assert len(validated) >= 3                                      # trials 2-4 validate (trial 1 may diverge first)


def test_the_best_config_is_a_preset_that_finetune_accepts(sweep):
    tmp, result, _, _ = sweep
    summary = result["sweeps"][0]
    cfg = load_config(FinetuneConfig, summary["best_config"])
    trials = json.loads((tmp / "sweeps" / NAME / "trials.json").read_text())["trials"]
    best = max((t for t in trials if t["best_val_dice"] is not None and t["status"] != "error"),
               key=lambda t: t["best_val_dice"])
    assert cfg.optim.lr == best["params"]["optim.lr"] and summary["best_val_dice"] == best["best_val_dice"]
    assert Path(summary["best_model"]).exists()
    table = (tmp / "sweeps" / NAME / "trials.md").read_text()
    assert table.count("\n") == 6 and "(best)" in table
