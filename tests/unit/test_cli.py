"""Command lines as users meet them: clear errors, one JSON line, configs saved."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_module


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_missing_dataset_is_one_clear_error_and_a_json_line(tmp_path):
    out = run_module("platform.preprocess", "--data", str(tmp_path / "nowhere"),
                     "--set", f"run.storage={tmp_path}")
    assert out.returncode == 1
    assert "error:" in out.stderr and "nowhere: no such dataset folder" in out.stderr
    assert "Traceback" not in out.stderr
    summary = last_json(out.stdout)
    assert summary["ok"] is False and "no such dataset folder" in summary["error"]


def test_bad_settings_are_refused_before_anything_runs_with_one_line_and_a_json_line(tmp_path):
    for args, message in [(["--set", "optim.lrr=1"], "unknown key 'optim.lrr'; valid keys: "),
                          (["--set", "optim.num_steps=-5"], "optim.num_steps=-5: must be at least 1"),
                          (["--set", "optim.lr=NaN"], "optim.lr=nan: must be a finite number above 0"),
                          (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
                          (["--set", "optim.lr=1e-3", "--set", "optim.lr=2e-3"],     # the last would win silently
                           "--set optim.lr is given more than once")]:
        out = run_module("platform.pretrain", *args, "--set", f"run.storage={tmp_path}")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(f"[swinray] error: {message}")
        assert last_json(out.stdout) == {"command": "pretrain", "ok": False, "error": last_json(out.stdout)["error"]}
        assert message in last_json(out.stdout)["error"]
    assert not (tmp_path / "pretrain").exists()


def test_cuda_without_a_gpu_is_one_clear_error(tmp_path):
    out = run_module("platform.evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(tmp_path),
                     "--set", "device=cuda", "--out", str(tmp_path / "eval"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "device=cuda but torch sees no GPU" in last_json(out.stdout)["error"]


def test_print_config_prints_the_resolved_config_and_leaves_a_finished_runs_files_alone(tmp_path):
    finished = tmp_path / "pretrain-debug" / "config.json"
    finished.parent.mkdir()
    finished.write_text('{"as": "trained"}\n')
    out = run_module("platform.pretrain", "--preset", "debug", "--set", "optim.lr=3e-4",
                     "--set", f"run.storage={tmp_path}", "--set", f"data.phantom_dir={tmp_path / 'ph'}",
                     "--set", f"data.cache_dir={tmp_path / 'cache'}", "--print-config")
    assert out.returncode == 0, out.stderr
    printed = last_json(out.stdout)["config"]
    assert printed["optim"]["lr"] == 3e-4 and printed["model"]["feature_size"] == 12   # override, preset
    assert printed["model"]["in_channels"] == 1 and printed["data"]["task"] == "ph"     # resolved from the data
    assert finished.read_text() == '{"as": "trained"}\n'
    assert sorted(p.name for p in finished.parent.iterdir()) == ["config.json"]
    assert len(out.stdout.splitlines()) == 1                                          # stdout: the JSON line only


def test_phantom_command_writes_the_dataset_and_says_where(tmp_path):
    out = run_module("platform.phantom", "--preset", "debug", "--out", str(tmp_path / "ph"), "--cases", "2")
    assert out.returncode == 0, out.stderr
    summary = last_json(out.stdout)
    assert summary["num_cases"] == 2 and (tmp_path / "ph" / "dataset.json").exists()
    assert json.loads((tmp_path / "ph" / "phantom_config.json").read_text())["num_cases"] == 2


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_command_ends_with_its_json_line_and_exit_code_130(tmp_path, stop):
    """Ctrl-C at a terminal, SIGTERM from ``ray job stop`` or a scheduler: the same ending."""
    out = tmp_path / "ph"
    command = subprocess.Popen([sys.executable, "-m", "platform.phantom", "--preset", "debug", "--out", str(out),
                                "--cases", "1000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while command.poll() is None and time.monotonic() < deadline and not (out / "imagesTr").is_dir():
        time.sleep(0.05)
    command.send_signal(stop)                       # while it writes the cases
    stdout, stderr = command.communicate(timeout=60)
    assert command.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stdout.count("\n") == 1 and json.loads(stdout) == {
        "command": "phantom", "config_path": str(out / "phantom_config.json"), "ok": False, "interrupted": True,
        "signal": stop.name, "error": f"interrupted by {stop.name}; run the same command again to resume"}
