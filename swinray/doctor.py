"""Check that a Ray cluster can run this project: tasks import the library, Train workers talk.

Before a long run on a new cluster, this answers in seconds what would otherwise fail an hour in:
can every node import ``swinray`` and torch, does ``platform.system()`` still work there, and can
Ray Train workers form a process group (gloo on CPU, NCCL on GPU) and all-reduce.

    python -m platform.doctor
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

import platform
from swinray import interrupt
from swinray.config import ConfigError, DoctorConfig, to_dict
from swinray.resolve import output_path
from swinray.runtime import init_ray, use_gpu, use_token_if_present
from swinray.storage import ray_storage_path

SOURCE_TREE = Path(__file__).resolve().parents[1]   # platform/, swinray/, models/: what a job needs
JOB_TIMEOUT_S = 900.0                               # a doctor job that runs longer is stuck (waiting for GPUs?)


def doctor_as_job(cfg: DoctorConfig, address: str, log) -> dict:
    """``RAY_ADDRESS`` is a dashboard's (the job API, as ``ray dashboard`` tunnels it), where a driver
    cannot join: run the doctor there as a job, as ``ray job submit --working-dir .`` would, and
    return the job's own summary."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    use_token_if_present()
    try:
        client = JobSubmissionClient(address)
        settings = [f"run.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in to_dict(cfg.run).items()
                    if k != "ray_address"]
        job = client.submit_job(
            entrypoint=shlex.join(["python", "-m", "platform.doctor", *(a for s in settings for a in ("--set", s))]),
            runtime_env={"working_dir": str(SOURCE_TREE),
                         "excludes": [".venv", ".git", "outputs", "data", "test-artifacts"]})
    except Exception as e:            # connection refused, no or a wrong token, a refused upload
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"RAY_ADDRESS={address}: the cluster's job API refused or did not answer ({first}); is "
                          "the head up (ray dashboard cluster/gpu.yaml for the tunnel), and does ~/.ray/auth_token "
                          "hold its token?") from None
    log(f"RAY_ADDRESS={address} is the cluster's job API: running the doctor there as job {job}")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                              JobStatus.STOPPED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {status} after {JOB_TIMEOUT_S:.0f} s (ray job logs {job})")
            time.sleep(1)
        lines = [line for line in client.get_job_logs(job).splitlines() if line.strip()]
    except Exception as e:
        raise ConfigError(f"the doctor job {job} on {address}: {e}") from None
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = "\n".join(lines[-15:])
        raise ConfigError(f"the doctor job {job} ended {status} without a summary:\n{tail}") from None
    return {**summary, "job": job}


def probe_node() -> dict:
    """What one Ray worker process sees: host, stdlib platform, torch and devices."""
    return {
        "host": socket.gethostname(),
        "system": platform.system(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_devices": torch.cuda.device_count(),
    }


def allreduce_per_worker(config: dict) -> None:
    """Each rank contributes rank + 1; every rank must see the sum 1 + 2 + ... + world_size.

    Rank 0 reports with a small checkpoint: Ray Train V2 keeps only metrics that come with a
    checkpoint, and persisting one proves the storage path is writable from the workers.
    """
    ctx = ray.train.get_context()
    value = torch.tensor([ctx.get_world_rank() + 1.0], device=ray.train.torch.get_device())
    dist.all_reduce(value)
    metrics = {"allreduce_sum": value.item(), "world_size": ctx.get_world_size(),
               "backend": dist.get_backend(), **probe_node()}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ctx.get_world_rank() == 0:
            Path(tmp, "doctor.json").write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def run_doctor(cfg: DoctorConfig, log=print) -> dict:
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        return doctor_as_job(cfg, address, log)
    cluster = init_ray(cfg.run)
    log(f"ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPU, {cluster['gpus']:g} GPU")

    probe = ray.remote(num_cpus=0.1)(probe_node)
    tasks = ray.get([probe.remote() for _ in range(cfg.run.num_workers)])
    log(f"ray tasks: {len(tasks)} ran library code on host(s) {sorted({t['host'] for t in tasks})}")

    gpu = use_gpu(cfg.run)
    cpus_per_worker = min(1.0, cluster["cpus"] / (cfg.run.num_workers + 1))
    trainer = TorchTrainer(
        allreduce_per_worker,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=cfg.run.name, storage_path=ray_storage_path(output_path(cfg.run.storage))),
    )
    with interrupt.ours_after():         # Train's SIGINT handler would outlive fit
        result = trainer.fit()
    metrics = result.metrics
    world = cfg.run.num_workers
    expected = world * (world + 1) / 2
    ok = metrics["allreduce_sum"] == expected
    log(f"ray train: {world} workers on {metrics['backend']}, all-reduce "
        f"{metrics['allreduce_sum']:g} (expected {expected:g}): {'ok' if ok else 'WRONG'}")
    return {"command": "doctor", "ok": ok, **cluster, "tasks": len(tasks),
            "train_workers": world, "backend": metrics["backend"], "use_gpu": gpu,
            "allreduce_sum": metrics["allreduce_sum"], "worker_system": metrics["system"],
            "checkpoint": result.checkpoint.path}
