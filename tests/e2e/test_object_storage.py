"""Everything in object storage: the phantom, the preprocessing cache, a pretraining run and a sweep
in s3:// (a real S3 API, moto's server on loopback), each command a subprocess as a user runs it.
A rerun with an empty mirror is another node, or a new machine, finding all of it in the bucket."""
import json

import boto3
import pytest

from conftest import run_module, s3_keys

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def summary_of(out) -> dict:
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def s3_text(bucket: str, key: str) -> str:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def test_a_run_in_s3_resumes_from_another_node_and_a_sweep_keeps_its_trials_there(s3_bucket, tmp_path):
    bucket, node_a = s3_bucket["bucket"], s3_bucket["env"]
    node_b = {**node_a, "SWINRAY_STORAGE_MIRROR": str(tmp_path / "mirror-b")}
    storage = f"s3://{bucket}/lab"
    pretrain = ["--preset", "debug", "--name", "ssl", "--set", f"run.storage={storage}",
                "--set", f"run.aim_repo={tmp_path / 'aim'}", "--set", "data.phantom_dir=", "--set", "data.cache_dir=",
                "--set", "optim.num_steps=4", "--set", "run.checkpoint_every_steps=2"]

    first = summary_of(run_module("platform.pretrain", *pretrain, env=node_a))
    assert first["ok"] and first["steps"] == 4
    assert first["encoder"] == f"{storage}/ssl/encoder.pt" and first["metrics_log"] == f"{storage}/ssl/metrics.jsonl"
    assert first["config_path"] == f"{storage}/ssl/config.json"
    keys = s3_keys(bucket, "lab/")
    assert {"lab/phantom/dataset.json", "lab/ssl/encoder.pt", "lab/ssl/config.json", "lab/ssl/metrics.jsonl"} <= set(keys)
    (manifest,) = [k for k in keys if k.startswith("lab/cache/") and k.endswith("/manifest.json")]
    assert len([k for k in keys if k.startswith(manifest.rsplit("/", 1)[0] + "/cases/") and k.endswith(".npy")]) == 4
    checkpoints = {k.split("/")[2] for k in keys if k.startswith("lab/ssl/checkpoint_") and k.endswith("/state.pt")}
    assert len(checkpoints) == 2                                        # run.num_checkpoints_kept, in S3
    log = s3_text(bucket, "lab/ssl/metrics.jsonl")
    assert [json.loads(line)["step"] for line in log.splitlines()] == [1, 2, 3, 4]

    out = run_module("platform.pretrain", *pretrain, env=node_b)        # an empty mirror: all from S3
    again = summary_of(out)
    assert again["steps"] == 4 and again["encoder_keys_missing"] == 0      # resumed at the end, not retrained
    assert "4 case(s) already cached, 0 to do" in out.stdout + out.stderr
    assert s3_text(bucket, "lab/ssl/metrics.jsonl") == log                # no step repeated, none lost
    assert (tmp_path / "mirror-b" / "s3" / bucket / "lab" / "ssl" / "encoder.pt").is_file()

    (tmp_path / "start.json").write_text(json.dumps([{"start_from_ssl": True}]))    # the encoder in S3
    sweep = summary_of(run_module(
        "platform.sweep", "--preset", "debug", "--name", "s", "--trials", "1", "--set", f"storage={storage}/sweeps",
        "--set", f"finetune.run.storage={storage}", "--set", f"finetune.run.aim_repo={tmp_path / 'aim'}",
        "--set", "finetune.data.phantom_dir=", "--set", "finetune.data.cache_dir=", "--set", "trial_samples=3",
        "--set", f"start_points={tmp_path / 'start.json'}", "--pretrained", first["encoder"], env=node_b))
    (result,) = sweep["sweeps"]
    assert result["trials"] == 1 and result["best_val_dice"] is not None
    assert result["best_model"] == f"{storage}/sweeps/s/best_model.pt"
    keys = set(s3_keys(bucket, "lab/sweeps/s/"))
    assert {"lab/sweeps/s/best_model.pt", "lab/sweeps/s/best_config.json", "lab/sweeps/s/trials.md",
            "lab/sweeps/s/trials.json", "lab/sweeps/s/split.json"} <= keys
    assert any(k.startswith("lab/sweeps/s/tune/") for k in keys)                       # Tune's experiment
    assert any("/trials/" in k and "/checkpoint_" in k for k in keys)                  # the trial's checkpoints
    trial_log = [k for k in keys if k.startswith("lab/sweeps/s/trials/") and k.endswith("/metrics.jsonl")]
    assert len(trial_log) == 1 and json.loads(s3_text(bucket, trial_log[0]).splitlines()[-1])["step"] == 3
    assert json.loads(s3_text(bucket, "lab/sweeps/s/best_config.json"))["seg"]["pretrained"] == first["encoder"]
