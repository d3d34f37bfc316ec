"""A `python -m platform...` driver starts Ray; its tasks and Train workers run library code.

Ray workers import the stdlib ``platform`` before anything of ours, so this is where a library
module living under ``platform/`` would fail ("'platform' is not a package").
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.timeout(1000)
def test_installed_quickstart_script_runs_every_step_from_any_folder(tmp_path):
    """The console script of an installed package, run outside the repo, writes under the cwd."""
    script = Path(sys.executable).parent / "swinray-quickstart"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="sr-qs-")
    out = subprocess.run([str(script), "--preset", "debug", "--verbose"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)   # --verbose: Ray's worker logs too
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(out.stdout.splitlines()) == 1, out.stdout[-3000:]       # stdout: the JSON line, even verbose
    summary = last_json_line(out.stdout)
    assert summary["ok"] is True
    assert list(summary["steps"]) == ["phantom", "preprocess", "pretrain", "finetune", "evaluate", "sweep"]
    assert summary["steps"]["phantom"]["num_cases"] == 4
    assert summary["steps"]["preprocess"]["cases_written"] == 4
    assert summary["steps"]["pretrain"]["steps"] == 8 and summary["steps"]["pretrain"]["ok"]
    assert (tmp_path / "outputs/phantom-debug/dataset.json").exists()
    assert (tmp_path / "outputs/debug/pretrain-debug/encoder.pt").exists()
    assert summary["steps"]["finetune"]["pretrained_report"].startswith("126 encoder tensors loaded, 0 missing")
    assert summary["steps"]["evaluate"]["num_cases"] == 1               # the held-out test case
    assert (tmp_path / "outputs/debug/finetune-debug/model.pt").exists()
    (sweep,) = summary["steps"]["sweep"]["sweeps"]
    assert sweep["trials"] == 2 and (tmp_path / "outputs/debug/sweeps/sweep-debug/best_config.json").exists()
    assert summary["steps"]["sweep"]["aim_repo"] == summary["steps"]["pretrain"]["aim_repo"]   # one Aim repo
    # Ray Train's placement-group cleaner polls the State API, which the local dashboard serves;
    # without it every run logged "Failed to query Ray Train Controller actor state" each second.
    assert "(TrainController pid=" in out.stderr                         # --verbose shows the actors' logs
    assert "Failed to query Ray Train Controller" not in out.stderr
    assert re.search(r"View the dashboard at \S*http://127\.0\.0\.1:\d+", out.stderr)   # local only
