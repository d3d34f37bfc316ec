"""Command lines as users meet them: clear errors, one JSON line, configs saved."""
import json

from conftest import run_module


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


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    out = run_module("platform.pretrain", "--set", "optim.lrr=1", "--set", f"run.storage={tmp_path}")
    assert out.returncode == 2 and "optim.lrr" in out.stderr and "optim.lr" in out.stderr
    assert not (tmp_path / "pretrain").exists()


def test_print_config_saves_the_resolved_config_and_runs_nothing(tmp_path):
    out = run_module("platform.pretrain", "--preset", "debug", "--set", "optim.lr=3e-4",
                     "--set", f"run.storage={tmp_path}", "--print-config")
    assert out.returncode == 0, out.stderr
    summary = last_json(out.stdout)
    saved = json.loads((tmp_path / "pretrain-debug" / "config.json").read_text())
    assert summary["config"] == saved and saved["optim"]["lr"] == 3e-4
    assert saved["model"]["feature_size"] == 12                         # from the debug preset
    assert not list((tmp_path / "pretrain-debug").glob("checkpoint_*"))


def test_phantom_command_writes_the_dataset_and_says_where(tmp_path):
    out = run_module("platform.phantom", "--preset", "debug", "--out", str(tmp_path / "ph"), "--cases", "2")
    assert out.returncode == 0, out.stderr
    summary = last_json(out.stdout)
    assert summary["num_cases"] == 2 and (tmp_path / "ph" / "dataset.json").exists()
    assert json.loads((tmp_path / "ph" / "phantom_config.json").read_text())["num_cases"] == 2
