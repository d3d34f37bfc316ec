"""SSL pretraining with Ray Train on a local Ray instance: learning, checkpoints, resume, faults."""
import json
import math
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from conftest import aim_hparams, aim_images, registered_checkpoint_steps, run_killing_a_worker, run_module
from swinray.config import PretrainConfig, apply_overrides
from swinray.presets import preset
from swinray.pretext.pictures import CAPTION
from swinray.report.runs import read_experiment
from swinray.train.pretrain import run_pretrain

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def quiet(*_):
    pass


def debug_config(tmp_path, **overrides) -> PretrainConfig:
    cfg = preset(PretrainConfig, "debug")
    cfg = replace(cfg, data=replace(cfg.data, phantom_dir=str(tmp_path.parent / "phantom"),
                                    cache_dir=str(tmp_path.parent / "cache")))
    return apply_overrides(cfg, {"run.storage": str(tmp_path), **overrides})


def read_metrics(summary) -> list[dict]:
    return [json.loads(line) for line in open(summary["metrics_log"])]


def mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def uninterrupted(local_ray, tmp_path_factory):
    """A debug pretraining run (8 steps, a checkpoint every 4) that nothing interrupts; with drop-path,
    so the killed run below has a draw from torch's global generator to replay."""
    tmp_path = tmp_path_factory.mktemp("pretrain")
    cfg = debug_config(tmp_path / "runs", **{"model.drop_path_rate": 0.1})
    return cfg, run_pretrain(cfg, quiet), tmp_path


def test_debug_run_learns_checkpoints_exports_and_a_rerun_resumes(uninterrupted):
    cfg, summary, tmp_path = uninterrupted
    assert summary["ok"] and summary["steps"] == cfg.optim.num_steps
    assert summary["weights_in_sync"] is True                   # both DDP replicas end identical
    rows = read_metrics(summary)
    assert [r["step"] for r in rows] == list(range(1, cfg.optim.num_steps + 1))
    # Eight steps at batch 1 move the reconstruction term clearly; rotation and contrastive
    # terms need far longer runs to trend (see the README's OpenKBP curve).
    first, last = rows[:3], rows[-3:]
    assert mean([r["loss_recon"] for r in last]) < 0.95 * mean([r["loss_recon"] for r in first])
    assert all(math.isfinite(r["loss"]) and r["loss_rot"] > 0 and r["loss_contrast"] > 0 for r in rows)
    assert all(0.0 <= r["data_wait_fraction"] <= 1.0 and r["samples_per_s"] > 0 for r in rows)
    run_dir = tmp_path / "runs" / cfg.run.name
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == cfg.run.num_checkpoints_kept
    assert summary["encoder_keys_missing"] == 0 and summary["encoder_keys_loaded"] > 100
    pictures = aim_images(tmp_path / "runs", "pretext_views")[cfg.run.name]   # one per checkpoint
    x, y, _ = cfg.model.roi_size
    assert pictures == {4: (3 * x + 4, y, CAPTION), 8: (3 * x + 4, y, CAPTION)}   # input | masked | reconstruction
    lines = []
    again = run_pretrain(cfg, lines.append)                # same name: over, so Train does not start
    assert again["steps"] == cfg.optim.num_steps and again["weights_in_sync"] is True
    assert any("already finished at step 8" in line for line in lines), lines
    assert not any(line.startswith("pretraining ") for line in lines), lines
    assert len(read_metrics(again)) == cfg.optim.num_steps
    # What ran is what was saved and tracked: the data's channels and task, the experiment, not sentinels
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["in_channels"] == 1 and saved["data"]["task"] == "phantom"
    assert saved["run"]["experiment"] == cfg.run.name and saved["run"]["aim_repo"] == str(tmp_path / "runs")
    assert aim_hparams(tmp_path / "runs")[cfg.run.name] == saved
    assert json.loads((run_dir / "config.requested.json").read_text())["model"]["in_channels"] == 0


def test_too_few_cases_for_the_workers_is_one_line_and_ok_false(uninterrupted, tmp_path):
    """A cached dataset with fewer cases than workers (the debug run's): refused before Ray starts, no traceback."""
    cfg, _, _ = uninterrupted
    out = run_module("platform.pretrain", "--preset", "debug", "--workers", "9", "--set", f"run.storage={tmp_path}",
                     "--set", f"data.phantom_dir={cfg.data.phantom_dir}",
                     "--set", f"data.cache_dir={cfg.data.cache_dir}")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and "4 cached case(s) for run.num_workers=9" in summary["error"]


def test_a_killed_worker_resumes_from_the_latest_checkpoint_and_redoes_its_steps_as_they_first_ran(
        uninterrupted, ray_tmpdir):
    reference_cfg, reference, tmp_path = uninterrupted
    cfg = apply_overrides(reference_cfg, {"run.name": "pretrain-kill"})     # nothing else differs
    run_dir = tmp_path / "runs" / cfg.run.name
    summary, killed_at = run_killing_a_worker(
        lambda: run_pretrain(cfg, quiet), ray_tmpdir, ready=lambda: bool(registered_checkpoint_steps(run_dir)),
        too_late=lambda: cfg.optim.num_steps in registered_checkpoint_steps(run_dir))
    assert summary["ok"] and summary["steps"] == cfg.optim.num_steps
    # The run finished although a worker died: it restarted from its checkpoint at step 4 (the steps
    # logged up to it before the kill are kept) and the log lines of the steps it redid were dropped
    rows = read_metrics(summary)
    assert [r["step"] for r in rows] == list(range(1, cfg.optim.num_steps + 1))
    resumed = next((r["step"] for r in rows if r["time"] > killed_at), None)
    assert resumed == cfg.run.checkpoint_every_steps + 1, rows
    # Each case, crop, view and drop-path draw follows from (seed, rank, step): the redone steps are
    # the uninterrupted run's, loss for loss
    for got, want in zip(rows, read_metrics(reference), strict=True):
        for key in ("loss", "loss_rot", "loss_contrast", "loss_recon"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["step"], key)


def immutable(path, on: bool) -> bool:
    """chattr +i/-i: even root cannot write an immutable tree (chmod would not stop root)."""
    return subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)],
                          capture_output=True).returncode == 0


def test_aim_repo_made_unwritable_mid_run_only_warns_and_the_log_is_complete(local_ray, tmp_path):
    cfg = debug_config(tmp_path / "runs", **{"optim.num_steps": 8, "run.name": "pretrain-aim"})
    outcome, messages = {}, []
    thread = threading.Thread(target=lambda: outcome.update(summary=run_pretrain(cfg, messages.append)))
    thread.start()
    run_dir, aim_dir = tmp_path / "runs" / cfg.run.name, tmp_path / "runs" / ".aim"
    try:
        deadline = time.time() + 600   # once the Aim writer has copied steps (its cursor file), so the repo exists
        while time.time() < deadline and thread.is_alive() and not (run_dir / "aim_run.json").exists():
            time.sleep(0.1)
        assert thread.is_alive(), "the run ended before the Aim writer's first copy"
        if not immutable(aim_dir, True):
            thread.join()
            pytest.skip("chattr +i is not available here")
        thread.join(timeout=800)
    finally:
        immutable(aim_dir, False)
    summary = outcome["summary"]
    assert summary["ok"] and summary["steps"] == cfg.optim.num_steps
    assert "Operation not permitted" in summary["aim_error"]
    assert len([m for m in messages if m.startswith("warning: Aim tracking is off")]) == 1     # once
    assert [r["step"] for r in read_metrics(summary)] == list(range(1, cfg.optim.num_steps + 1))
    from aim import Repo
    assert len(Repo.from_path(str(tmp_path / "runs")).list_all_runs()) == 1   # it was tracking before
    (tracked,) = read_experiment(str(tmp_path / "runs"), cfg.run.name)
    assert list(tracked.curves.get("loss", ([], []))[0]) != list(range(1, cfg.optim.num_steps + 1))   # missed
    again = run_pretrain(cfg, quiet)        # finished: no training, and Aim gets the steps it missed
    assert again["steps"] == cfg.optim.num_steps and again["aim_error"] is None
    (tracked,) = read_experiment(str(tmp_path / "runs"), cfg.run.name)
    assert list(tracked.curves["loss"][0]) == list(range(1, cfg.optim.num_steps + 1))
