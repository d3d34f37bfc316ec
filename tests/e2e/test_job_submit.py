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

from conftest import REPO, SHARED_DATA, aim_hparams, aim_images, run_module, s3_keys, s3_text
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
def test_submitted_doctor_joins_the_head_and_runs_train_workers_keeping_its_files_out_of_rays_temp(
        ray_head, tmp_path):
    """Default (relative) storage under a job: not in the unpacked working dir that Ray deletes, but
    under ~/swinray (HOME is a temporary folder here)."""
    job = "swinray-doctor"
    env = json.dumps({**json.loads(RUNTIME_ENV), "env_vars": {"HOME": str(tmp_path)}})
    submit = ray_job(ray_head, "submit", "--submission-id", job, "--working-dir", ".",
                     "--runtime-env-json", env, "--", "python", "-m", "platform.doctor",
                     "--preset", "debug", timeout=240)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]

    status = ray_job(ray_head, "status", job)
    assert f"Job '{job}' succeeded" in status.stdout, status.stdout + status.stderr

    logs = ray_job(ray_head, "logs", job)
    assert logs.returncode == 0, logs.stderr[-2000:]
    summary = json.loads(logs.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["tasks"] == 2
    assert summary["backend"] == "gloo" and summary["use_gpu"] is False
    assert summary["allreduce_sum"] == 3.0                             # ranks 0, 1 add 1 + 2
    assert summary["worker_system"] == "Linux"                         # stdlib platform on the worker
    assert summary["ray_address"] == ray_head.address                  # joined, did not start one
    run_dir = tmp_path / "swinray" / "outputs" / "debug" / "doctor"     # the debug preset's outputs/debug
    assert json.loads((run_dir / "config.json").read_text())["run"]["num_workers"] == 2
    assert [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]     # storage writable
    assert "relative output paths go under" in logs.stdout               # and the job's log says so


@pytest.mark.timeout(300)
def test_doctor_given_the_dashboards_address_and_no_auth_mode_runs_itself_as_a_job(ray_head, tmp_path):
    """What the README has users export (RAY_ADDRESS=http://...:8265), with the token where `ray
    get-auth-token` saves it and RAY_AUTH_MODE unset."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(ray_head.token_path.read_text())
    env = {**{k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH_")},
           "HOME": str(home), "RAY_ADDRESS": ray_head.dashboard_url}
    out = run_module("platform.doctor", "--preset", "debug", "--set", f"run.storage={tmp_path / 'runs'}", env=env,
                     timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)                                     # stdout: the JSON line only
    assert summary["ok"] is True and summary["job"] and summary["allreduce_sum"] == 3.0
    assert summary["ray_address"] == ray_head.address                    # the job joined the head
    assert summary["checkpoint"].startswith(str(tmp_path / "runs" / "doctor" / "checkpoint_"))   # its Train run
    refused = run_module("platform.doctor", env={**env, "HOME": str(tmp_path)}, timeout=120)   # no token at all
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "the cluster's job API refused or did not answer" in json.loads(refused.stdout)["error"]


def submit_and_summarise(head: RayHead, job: str, *entrypoint: str, runtime_env: dict | None = None) -> dict:
    """Submit, wait, and return the job's closing JSON line."""
    env = json.dumps({**json.loads(RUNTIME_ENV), **(runtime_env or {})})
    submit = ray_job(head, "submit", "--submission-id", job, "--working-dir", ".",
                     "--runtime-env-json", env, "--", *entrypoint, timeout=240)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
    assert f"Job '{job}' succeeded" in ray_job(head, "status", job).stdout
    return json.loads(ray_job(head, "logs", job).stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_submitted_pretraining_on_real_ct_writes_everything_to_s3(ray_head, s3_bucket, tmp_path):
    """A short debug run on the real head-and-neck CTs (the phantom when they are absent), its
    storage an S3 bucket (moto's server on loopback): the job's runtime env carries the credentials."""
    openkbp = SHARED_DATA / "OpenKBP_HN_CT" / "imagesTr"
    data = ["--data", str(openkbp), "--set", "data.max_cases=4"] if openkbp.exists() else []
    # No run.storage: the debug preset's relative outputs/debug, rooted at $SWINRAY_STORAGE (a cluster's
    # shared storage), here a bucket: lab/outputs/debug
    storage = f"s3://{s3_bucket['bucket']}/lab/outputs/debug"
    summary = submit_and_summarise(
        ray_head, "swinray-pretrain", "python", "-m", "platform.pretrain", "--preset", "debug", *data,
        "--set", "data.cache_dir=", "--set", "data.phantom_dir=",
        "--set", f"run.aim_repo={tmp_path / 'aim'}", "--set", "optim.num_steps=3",
        "--set", "run.checkpoint_every_steps=2",
        runtime_env={"env_vars": {**s3_bucket["env"], "SWINRAY_STORAGE": f"s3://{s3_bucket['bucket']}/lab"}})
    assert summary["ok"] is True and summary["steps"] == 3
    assert summary["encoder_keys_missing"] == 0
    assert summary["encoder"] == f"{storage}/pretrain-debug/encoder.pt"
    assert summary["checkpoint"].startswith(f"{storage}/pretrain-debug/checkpoint_")
    prefix = "lab/outputs/debug/"
    keys = s3_keys(s3_bucket["bucket"], prefix)
    assert {f"{prefix}pretrain-debug/encoder.pt", f"{prefix}pretrain-debug/config.json"} <= set(keys)
    cached = [k for k in keys if k.startswith(f"{prefix}cache/") and k.endswith(".npy")]
    assert len(cached) == 4 and any(k.endswith("/manifest.json") for k in keys)   # preprocessed into S3
    assert len({k.split("/")[4] for k in keys if k.startswith(f"{prefix}pretrain-debug/checkpoint_")
                and k.endswith("/state.pt")}) == 2                                 # steps 2 and 3, in S3
    log = s3_text(s3_bucket["bucket"], f"{prefix}pretrain-debug/metrics.jsonl")
    assert [json.loads(line)["step"] for line in log.splitlines()] == [1, 2, 3]
    # Tracking without an Aim server: the pictures went to S3 beside the metrics, and the job's driver
    # copied both into its local repo (the head's, on a cluster)
    assert summary["aim_error"] is None and f"{prefix}pretrain-debug/images.jsonl" in keys
    assert sorted(aim_images(tmp_path / "aim", "pretext_views")["pretrain-debug"]) == [2, 3]
    assert aim_hparams(tmp_path / "aim")["pretrain-debug"]["run"]["storage"] == storage
