"""`ray job submit` to a `ray start --head` cluster runs the platform, as a user runs it.

Under the job API the driver gets ``RAY_ADDRESS`` from Ray and must join the head instead of
starting its own instance, and the uploaded working dir must carry ``platform/`` so that
``python -m platform.doctor`` resolves there. The head has token authentication on, as Ray >= 2.60
clusters have by default, so a client without the cluster's token is refused.

    .venv/bin/python -m pytest tests/e2e/test_job_submit.py -q
"""
import json
import subprocess

import pytest

from conftest import REPO, SHARED_DATA
from ray_head import RAY, RayHead

pytestmark = pytest.mark.e2e

# .venv alone is 2 GB; Ray >= 2.60 skips .venv, .git and .gitignore'd paths by default, but the
# test should not depend on those defaults to keep the upload small.
RUNTIME_ENV = json.dumps({"excludes": [".venv", "outputs", ".git"]})


@pytest.fixture(scope="module")
def ray_head():
    with RayHead(num_cpus=2) as head:
        yield head


def ray_job(head: RayHead, verb: str, *args: str, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """``ray job VERB --address <dashboard> ARGS`` from the repo root, as a client of ``head``.

    The address goes first: anything after ``--`` belongs to the job's entrypoint.
    """
    return subprocess.run([str(RAY), "job", verb, "--address", head.dashboard_url, *args],
                          cwd=REPO, env=env or head.env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(300)
def test_job_submit_without_auth_mode_is_refused_as_missing_token(ray_head, tmp_path):
    """A client that does not set RAY_AUTH_MODE=token sends no token, even if one is on disk."""
    env = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH_")}
    env["HOME"] = str(tmp_path)                 # no ~/.ray/auth_token to fall back on
    out = ray_job(ray_head, "submit", "--no-wait", "--", "true", env=env)
    assert out.returncode != 0
    assert "AuthenticationError: Authentication required: Unauthorized: Missing authentication " \
           "token" in out.stderr, out.stderr[-2000:]


@pytest.mark.timeout(120)
def test_job_submit_with_a_wrong_token_is_refused(ray_head, tmp_path):
    wrong = tmp_path / "auth_token"
    wrong.write_text("0" * 64)
    out = ray_job(ray_head, "submit", "--no-wait", "--", "true",
                  env={**ray_head.env, "RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert out.returncode != 0
    assert "AuthenticationError: Authentication failed: Forbidden: Invalid authentication token" \
           in out.stderr, out.stderr[-2000:]


@pytest.mark.timeout(300)
def test_submitted_doctor_joins_the_head_and_runs_train_workers(ray_head, tmp_path):
    job = "swinray-doctor"
    submit = ray_job(ray_head, "submit", "--submission-id", job, "--working-dir", ".",
                     "--runtime-env-json", RUNTIME_ENV, "--", "python", "-m", "platform.doctor",
                     "--preset", "debug", "--set", f"run.storage={tmp_path}", timeout=240)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]

    status = ray_job(ray_head, "status", job)
    assert f"Job '{job}' succeeded" in status.stdout, status.stdout + status.stderr

    logs = ray_job(ray_head, "logs", job)
    assert logs.returncode == 0, logs.stderr[-2000:]
    summary = json.loads(logs.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["allreduce_sum"] == 3.0    # ranks 0, 1 add 1 + 2
    assert summary["ray_address"] == ray_head.address                  # joined, did not start one
    assert (tmp_path / "doctor" / "config.json").exists()


def submit_and_summarise(head: RayHead, job: str, *entrypoint: str) -> dict:
    """Submit, wait, and return the job's closing JSON line."""
    submit = ray_job(head, "submit", "--submission-id", job, "--working-dir", ".",
                     "--runtime-env-json", RUNTIME_ENV, "--", *entrypoint, timeout=240)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
    assert f"Job '{job}' succeeded" in ray_job(head, "status", job).stdout
    return json.loads(ray_job(head, "logs", job).stdout.strip().splitlines()[-1])


@pytest.mark.timeout(400)
def test_submitted_preprocess_fills_the_cache_and_a_resubmission_does_no_work(ray_head, tmp_path):
    entrypoint = ["python", "-m", "platform.preprocess", "--preset", "debug",
                  "--set", f"data.phantom_dir={tmp_path / 'phantom'}",
                  "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"run.storage={tmp_path}"]
    first = submit_and_summarise(ray_head, "swinray-preprocess-1", *entrypoint)
    assert (first["cases_written"], first["cases_rejected"]) == (4, 0)
    assert len(list((tmp_path / "cache").glob("*/cases/*.npy"))) == 4
    second = submit_and_summarise(ray_head, "swinray-preprocess-2", *entrypoint)
    assert (second["cases_written"], second["cases_skipped"]) == (0, 4)


@pytest.mark.timeout(600)
def test_submitted_pretraining_on_real_ct_succeeds_and_exports_the_encoder(ray_head, tmp_path):
    """A short debug run on the real head-and-neck CTs (the phantom when they are absent)."""
    openkbp = SHARED_DATA / "OpenKBP_HN_CT" / "imagesTr"
    data = ["--data", str(openkbp), "--set", "data.max_cases=4"] if openkbp.exists() else \
        ["--set", f"data.phantom_dir={tmp_path / 'phantom'}"]
    summary = submit_and_summarise(
        ray_head, "swinray-pretrain", "python", "-m", "platform.pretrain", "--preset", "debug", *data,
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"run.storage={tmp_path / 'runs'}",
        "--set", "optim.num_steps=3")
    assert summary["ok"] is True and summary["steps"] == 3
    assert summary["encoder_keys_missing"] == 0
    assert (tmp_path / "runs" / "pretrain-debug" / "encoder.pt").exists()
