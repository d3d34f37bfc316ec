"""A debug sweep on the phantom, interrupted with Ctrl-C and finished by running the same command again,
on "another node": storage in S3 (moto's server on loopback), the second command with an empty mirror.

Start points make the run deterministic where it matters: trial 1 (learning rate 1e6) diverges at
step 2 and must end failed in Tune and in Optuna; trial 2 trains normally; trial 3 (learning rate
2e6) collapses to Dice 0 after one step, below trial 2's, so ASHA stops it at its first rung before
it can diverge; trial 4 is interrupted after its first checkpoint and resumed by the second command.
(ASHA's rung records are not part of Tune's saved state, so its decisions are asserted before the
interruption.)
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import aim_up, chromium, dismiss_popups, page_text
from conftest import REPO, run_module, s3_keys, s3_text
from swinray.config import FinetuneConfig, load_config
from swinray.report.runs import read_experiment
from swinray.tracking import aim_explorer_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
NAME = "s"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts"))


BUCKET = "swinray-sweep-test"
PREFIX = f"sweeps/{NAME}/"


def sweep_command(tmp: Path) -> list[str]:
    """The sweep and the fine-tuning runs' storage (phantom, cache) in S3; Aim in a local repo."""
    return [sys.executable, "-m", "platform.sweep", "--preset", "debug", "--name", NAME, "--trials", "4",
            "--set", f"storage=s3://{BUCKET}/sweeps", "--set", f"start_points={tmp / 'start.json'}",
            "--set", "finetune.data.phantom_dir=", "--set", "finetune.data.cache_dir=",
            "--set", f"finetune.run.storage=s3://{BUCKET}/runs", "--set", f"finetune.run.aim_repo={tmp / 'runs'}",
            "--set", "trial_samples=6"]


def node(tmp: Path, name: str) -> Path:
    """A node's mirror of the bucket: the second command runs on a "node" that has none of the first's files."""
    return tmp / f"mirror-{name}"


def sweep_dir(tmp: Path) -> Path:
    """The sweep's folder in the second node's mirror, where the rerun wrote its tables."""
    return node(tmp, "b") / "s3" / BUCKET / "sweeps" / NAME


def env(tmp: Path, name: str) -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "SWINRAY_STORAGE_MIRROR": str(node(tmp, name))}


def metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def trial_started_at(trials: Path, point: dict) -> Path | None:
    """The trial folder whose config is that start point, by its settings: a folder's ctime moves
    whenever a file is added to it, so it does not tell the order trials started in."""
    for folder in trials.glob("*"):
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if all(config.get(section, {}).get(key) == value
               for section, key, value in ((*k.split(".", 1), v) for k, v in point.items())):
            return folder
    return None


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """Credentials and the endpoint in this process's environment (the commands inherit it), and the bucket."""
    import boto3
    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint})
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield BUCKET
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, s3):
    tmp = tmp_path_factory.mktemp("sweep")
    start = [{"optim.lr": 1e6}, {"optim.lr": 1e-3}, {"optim.lr": 2e6}, {"optim.lr": 5e-4}]
    (tmp / "start.json").write_text(json.dumps(start))
    trials = node(tmp, "a") / "s3" / BUCKET / "sweeps" / NAME / "trials"   # rank 0 logs here on node a
    log_first = tmp / "first.log"
    with log_first.open("w") as stderr:
        first = subprocess.Popen(sweep_command(tmp), cwd=REPO, env=env(tmp, "a"), stdout=subprocess.PIPE,
                                 stderr=stderr, text=True)
        deadline = time.monotonic() + 600
        interrupted_trial = None
        while time.monotonic() < deadline and first.poll() is None:   # Ctrl-C once trial 4 has a checkpoint
            fourth = trial_started_at(trials, start[3])
            if fourth and metrics_steps(fourth) and \
                    s3_keys(BUCKET, f"{PREFIX}trials/{fourth.name}/checkpoint_"):   # one trial at a time
                interrupted_trial = fourth.name
                first.send_signal(signal.SIGINT)                    # Ctrl-C to the sweep command
                break
            time.sleep(0.5)
        stdout_first = first.communicate(timeout=300)[0]
    assert interrupted_trial, "the sweep never reached trial 4:\n" + log_first.read_text()[-3000:]
    interrupted = {"returncode": first.returncode, "stdout": stdout_first, "log": log_first.read_text()}
    second = subprocess.run(sweep_command(tmp), cwd=REPO, env=env(tmp, "b"), capture_output=True, text=True,
                            timeout=900)
    assert second.returncode in (0, 1), second.stderr[-3000:]
    assert len(second.stdout.splitlines()) == 1, second.stdout[-3000:]   # no Tune banner: the JSON line only
    result = json.loads(second.stdout)
    return tmp, result, interrupted_trial, second.stderr, interrupted


def test_ctrl_c_ends_the_sweep_as_interrupted_with_its_cut_trial_named_so_and_exit_code_130(sweep):
    tmp, _, cut, _, first = sweep
    assert first["returncode"] == 130, first["log"][-3000:]
    summary = json.loads(first["stdout"])                       # the one line on stdout
    assert (summary["ok"], summary["interrupted"], summary["signal"]) == (False, True, "SIGINT")
    (task,) = summary["sweeps"]
    assert (task["trials"], task["errored"], task["early_stopped"], task["interrupted_trials"]) == (4, 1, 1, 1)
    # The table so far, as the first node wrote it: ASHA's stop and Ctrl-C's are told apart
    trials = json.loads((node(tmp, "a") / "s3" / BUCKET / "sweeps" / NAME / "trials.json").read_text())["trials"]
    assert {t["trial_id"]: t["status"] for t in trials}[cut] == "interrupted"
    assert sorted(t["status"] for t in trials) == ["error", "finished", "interrupted", "stopped early"]


def test_the_rerun_on_another_node_restores_the_sweep_from_s3_and_resumes_the_interrupted_trial(sweep):
    tmp, result, interrupted, log, _ = sweep
    assert f"restoring s3://{BUCKET}/sweeps/{NAME}/tune" in log
    assert "already refused (files and limits unchanged), 0 to do" in log   # the cache, too, came from S3
    (summary,) = result["sweeps"]
    assert summary["trials"] == 4                              # not 5: the finished trial 1 is not redone
    keys = s3_keys(BUCKET, PREFIX)
    assert len({k.split("/")[3] for k in keys if k.startswith(f"{PREFIX}trials/")}) == 4
    assert any(k.startswith(f"{PREFIX}tune/") for k in keys)     # Tune's experiment state
    log_lines = s3_text(BUCKET, f"{PREFIX}trials/{interrupted}/metrics.jsonl").splitlines()
    steps = [json.loads(line)["step"] for line in log_lines]
    assert steps == [1, 2, 3]                                   # continued from its checkpoint, each step once
    assert summary["best_model"] == f"s3://{BUCKET}/{PREFIX}best_model.pt" and f"{PREFIX}best_model.pt" in keys


def test_a_diverging_trial_fails_in_tune_and_in_optuna(sweep):
    tmp, result, _, _, _ = sweep
    record = json.loads((sweep_dir(tmp) / "trials.json").read_text())
    states = [t["state"] for t in record["optuna_study"]]
    assert len(states) == 4 and states[0] == "FAIL" and "RUNNING" not in states
    first = record["optuna_study"][0]
    assert first["params"]["optim.lr"] == 1e6
    errored = [t for t in record["trials"] if t["status"] == "error"]
    assert len(errored) == 1 and "diverged at step 2" in errored[0]["error"]


def test_asha_stops_the_collapsed_trial_at_its_first_rung(sweep):
    tmp, result, _, _, _ = sweep
    trials = json.loads((sweep_dir(tmp) / "trials.json").read_text())["trials"]
    collapsed = [t for t in trials if t["params"]["optim.lr"] == 2e6]
    assert [t["status"] for t in collapsed] == ["stopped early"] and collapsed[0]["steps"] == 1
    assert result["sweeps"][0]["early_stopped"] >= 1
    workers = 2                                                     # the debug preset's, each drawing a batch
    assert all(t["samples"] == t["steps"] * t["params"]["optim.batch_size"] * workers for t in trials)  # what each cost
    finished = [t for t in trials if t["status"] == "finished"]     # 6 samples each: 3 validations 2 samples apart
    assert finished and all(t["steps"] == t["params"]["optim.num_steps"] == 3 * t["params"]["seg.val_every_steps"]
                            for t in finished)
    assert result["sweeps"][0]["trial_samples"] == sum(t["samples"] for t in trials)


def test_every_trial_is_one_aim_run_in_the_sweeps_experiment(sweep):
    from aim import Repo, Run
    tmp, result, _, _, _ = sweep
    assert result["aim_repo"] == str(tmp / "runs")                 # where fine-tuning runs of this config go
    repo = Repo.from_path(result["aim_repo"])
    hashes = repo.list_all_runs()
    runs = [Run(h, repo=result["aim_repo"], read_only=True) for h in hashes]
    assert [run.experiment for run in runs] == [NAME] * 4           # the resumed trial kept its run
    for run in runs:                                                # each trial's resolved config, as it ran
        hparams = run["hparams"]
        assert hparams["data"]["task"] == "phantom" and hparams["model"]["roi_size"] == [64, 64, 64]
        assert (hparams["model"]["in_channels"], hparams["model"]["out_channels"]) == (1, 14)
        assert hparams["run"]["name"] == run.name and hparams["run"]["experiment"] == NAME
    # Closed runs are indexed, so Aim's query SDK (and `aim up`) sees them and their metrics
    assert sorted(run.hash for run in repo.iter_runs()) == sorted(hashes)
    assert all(run.active is False for run in repo.iter_runs())
    validated = {m.run.hash for m in repo.query_metrics("metric.name == 'val_dice'").iter()}
    assert len(validated) >= 3                                      # trials 2-4 validate (trial 1 may diverge first)


def test_the_best_config_is_a_preset_that_finetune_accepts(sweep):
    tmp, result, _, _, _ = sweep
    summary = result["sweeps"][0]
    assert summary["best_config"] == f"s3://{BUCKET}/{PREFIX}best_config.json"
    cfg = load_config(FinetuneConfig, sweep_dir(tmp) / "best_config.json")
    trials = json.loads((sweep_dir(tmp) / "trials.json").read_text())["trials"]
    best = max((t for t in trials if t["best_val_dice"] is not None and t["status"] != "error"),
               key=lambda t: t["best_val_dice"])
    assert cfg.optim.lr == best["params"]["optim.lr"] and summary["best_val_dice"] == best["best_val_dice"]
    assert (sweep_dir(tmp) / "best_model.pt").exists()
    table = (sweep_dir(tmp) / "trials.md").read_text()
    assert table.count("\n") == 6 and "(best)" in table


def shown(value: float, numbers: list[float]) -> bool:
    """Whether the page shows ``value`` (Aim rounds to 8 decimals)."""
    return any(abs(n - value) <= 1e-7 + 1e-6 * abs(value) for n in numbers)


def test_the_aim_ui_lists_every_trial_with_its_hyperparameters_and_validation_dice(sweep):
    from selenium.webdriver.support.ui import WebDriverWait
    tmp, result, _, _, _ = sweep
    trials = json.loads((sweep_dir(tmp) / "trials.json").read_text())["trials"]
    runs = read_experiment(result["aim_repo"], NAME)                # what Aim holds, through its SDK
    assert sorted(r.name for r in runs) == sorted(t["trial_id"] for t in trials)   # Aim names runs after trials
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Wide enough that the table renders every metric column and the hparams after them (data.* and
    # its limits come before optim.*)
    with aim_up(Path(result["aim_repo"])) as base, chromium(width=16000, height=700) as browser:
        browser.get(aim_explorer_url(f'run.experiment == "{NAME}"', page="runs", base=base))
        WebDriverWait(browser, 60).until(lambda b: all(r.name in page_text(b) for r in runs))
        dismiss_popups(browser)
        text = page_text(browser)
        browser.save_screenshot(str(ARTIFACTS / "aim_runs.png"))
        browser.set_window_size(1400, 800)
        browser.get(aim_explorer_url(f'metric.name == "val_dice" and run.experiment == "{NAME}"', base=base))
        WebDriverWait(browser, 60).until(lambda b: "Steps" in page_text(b))      # the chart's axis is drawn
        dismiss_popups(browser)
        browser.save_screenshot(str(ARTIFACTS / "aim_val_dice.png"))
    assert "hparams.optim.lr" in text and "val_dice" in text
    numbers = [float(t) for t in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]
    for run in runs:
        assert shown(run.params["optim.lr"], numbers), f"{run.name}: lr {run.params['optim.lr']} not shown"
        steps, dice = run.curves["val_dice"]
        assert shown(dice[-1], numbers), f"{run.name}: last val_dice {dice[-1]} not shown"
    assert (ARTIFACTS / "aim_runs.png").stat().st_size > 10_000


def test_the_report_command_writes_markdown_and_plots_from_the_sweeps_aim_runs(sweep, tmp_path):
    tmp, result, _, _, _ = sweep
    out = run_module("platform.report", "--aim-repo", result["aim_repo"], "--experiment", NAME,
                     "--out", str(tmp_path / "report"), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    trials = json.loads((sweep_dir(tmp) / "trials.json").read_text())["trials"]
    assert report["runs"] == 4 and report["active"] == 0
    assert "optim.lr" in report["hyperparameters"] and "run.name" not in report["hyperparameters"]
    best_in_aim = max((r for r in read_experiment(result["aim_repo"], NAME) if "val_dice" in r.curves),
                      key=lambda r: r.best("val_dice")[1])
    assert report["best_run"] == best_in_aim.name
    assert len(report["best_per_class"]) == 13                        # the phantom's organs
    assert [Path(p).name for p in report["plots"]] == ["val_dice_per_run.png", "parallel_coordinates.png",
                                                       "best_run_per_class.png"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["plots"])
    markdown = Path(report["report"]).read_text()
    assert all(t["trial_id"] in markdown for t in trials) and "parallel_coordinates.png" in markdown
