"""Ctrl-C and SIGTERM on the training commands, as a user or ``ray job stop`` sends them: the command
ends with its JSON line (``interrupted``) and exit code 130, and the same command run again resumes
the run from its last checkpoint, each step in ``metrics.jsonl`` once. Both commands stop through
``trainer.fit_followed``, so the resume is run for fine-tuning only (pretraining's resume is in
test_pretrain.py). (The sweep's are in test_sweep.py.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, registered_checkpoint_steps, run_module

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def aim_writers_for(storage: Path) -> list[str]:
    """Command lines of Aim writer processes still alive for repos under ``storage``."""
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"swinray.aim_writer" in args and any(str(storage).encode() in a for a in args):
            alive.append(b" ".join(args).decode(errors="replace"))
    return alive


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]   # not a line being written


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """One phantom and cache for both commands."""
    tmp = tmp_path_factory.mktemp("interrupt-data")
    return ["--set", f"data.phantom_dir={tmp / 'phantom'}", "--set", f"data.cache_dir={tmp / 'cache'}"]


@pytest.mark.parametrize("verb, stop, steps, resume", [
    pytest.param("finetune", signal.SIGINT, 6, True, id="finetune-ctrl-c"),   # the debug preset's 6 steps:
                                                                    # checkpoints at its validations (3, 6) and at 4
    pytest.param("pretrain", signal.SIGTERM, 12, False, id="pretrain-sigterm"),  # every 4 steps: room to stop
])
def test_an_interrupted_run_says_so_and_exits_130_and_a_finetune_rerun_resumes_it(verb, stop, steps, resume, data,
                                                                                  tmp_path):
    args = ["--preset", "debug", "--set", f"run.storage={tmp_path}", "--set", f"optim.num_steps={steps}", *data]
    run_dir = tmp_path / f"{verb}-debug"
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen([sys.executable, "-m", f"platform.{verb}", *args], cwd=REPO, text=True,
                                 stdout=subprocess.PIPE, stderr=stderr,
                                 env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        deadline, stopped_at = time.monotonic() + 600, None
        while first.poll() is None and time.monotonic() < deadline:   # once a step after a checkpoint is logged
            checkpoints = registered_checkpoint_steps(run_dir)
            if checkpoints and max(logged_steps(run_dir), default=0) > max(checkpoints):
                stopped_at = time.time()
                first.send_signal(stop)
                break
            time.sleep(0.1)
        stdout = first.communicate(timeout=300)[0]
    assert stopped_at, "the run never got past its first checkpoint:\n" + log.read_text()[-3000:]
    assert first.returncode == 130, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    summary = json.loads(stdout)                                    # the one line on stdout
    assert summary["command"] == verb and summary["run_dir"] == str(run_dir)
    assert (summary["ok"], summary["interrupted"], summary["signal"]) == (False, True, stop.name)
    resumed_from = max(registered_checkpoint_steps(run_dir))
    assert resumed_from <= summary["steps"] < steps                 # cut before its end
    assert summary["aim_error"] is None and not aim_writers_for(tmp_path)   # Aim got its last copy, and let go
    if not resume:
        return
    again = run_module(f"platform.{verb}", *args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["steps"] == steps
    assert json.loads(again.stdout)["aim_error"] is None            # the same Aim run, unlocked, continued
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))   # each step once
    # It went on from its checkpoint: the steps up to it are the first command's, those after it redone
    assert [r["step"] for r in rows if r["time"] < stopped_at] == list(range(1, resumed_from + 1))
