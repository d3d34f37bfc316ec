"""``bench gpu``'s scaling part: the pretraining step on several Ray Train workers, NCCL between GPUs
(gloo between CPU workers), against one device's samples/s from the ``pretrain`` part.

Every worker trains on random crops already on its device (the data supply is measured on its own),
so the figure is the compute and the gradient all-reduce (the one-device figure it is compared with
is fed by the crop pipeline: with a data-wait fraction near 0 the two are comparable); the
contrastive loss gathers its negatives from all workers, as in pretraining.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace

import ray.train
import torch

from swinray import interrupt
from swinray.bench.gpu import WARMUP_STEPS
from swinray.config import BenchConfig, PretrainConfig, from_dict, to_dict
from swinray.errors import ConfigError
from swinray.models.registry import build_ssl_head
from swinray.runtime import init_ray, shutdown_local_ray
from swinray.train.replay import VIEWS, step_generator
from swinray.train.state import make_optimizer
from swinray.train.steps import ssl_forward_backward
from swinray.train.trainer import make_trainer, worker_resources


def _worker(config: dict) -> None:
    bench, pre = from_dict(BenchConfig, config["bench"]), from_dict(PretrainConfig, config["pretrain"])
    ctx = ray.train.get_context()
    rank, device = ctx.get_world_rank(), ray.train.torch.get_device()
    torch.manual_seed(bench.run.seed)
    m = pre.model
    net = build_ssl_head(in_channels=1, feature_size=m.feature_size, roi_size=m.roi_size, window_size=m.window_size)
    model = ray.train.torch.prepare_model(net)
    optimizer, scheduler = make_optimizer(model, pre.optim)
    crop = torch.randn((pre.optim.batch_size, 1, *m.roi_size), device=device)
    times = []
    for step in range(WARMUP_STEPS + config["steps"]):      # the same number on every rank: no rank waits alone
        began = time.perf_counter()
        ssl_forward_backward(model, crop, pre.pretext, step_generator(bench.run.seed, rank, step, VIEWS),
                             bench.run.amp_bf16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), pre.optim.grad_clip_norm)    # as the one-device part
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - began)
    # Train V2 keeps the metrics of checkpointed reports: rank 0 attaches an empty one
    with tempfile.TemporaryDirectory() as empty:
        ray.train.report({"seconds_per_step": sum(times) / len(times), "backend": torch.distributed.get_backend()},
                         checkpoint=ray.train.Checkpoint.from_directory(empty) if rank == 0 else None)


def scaling(cfg: BenchConfig, pre: PretrainConfig, device: torch.device, workers: int, one_device: dict | None) -> dict:
    gpu = device.type == "cuda"
    run = replace(cfg.run, device="cuda" if gpu else "cpu", num_workers=workers, max_failures=0)
    cluster = init_ray(run)
    free = ray.available_resources().get("GPU" if gpu else "CPU", 0.0)
    if gpu and free < workers:          # Train would wait for them forever
        raise ConfigError(f"the scaling part needs {workers} free GPUs, the Ray cluster has {free:g} "
                          "(a job started with --entrypoint-num-gpus holds one of them)")
    resources, _ = worker_resources(cluster["cpus"], workers, gpu)
    steps = max(3, min(cfg.budget_steps or 10, 20))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-scaling-") as storage:
        trainer = make_trainer(_worker, {"bench": to_dict(cfg), "pretrain": to_dict(pre), "steps": steps},
                               run, gpu, resources, name="bench-gpu-scaling",
                               storage=storage)
        try:
            with interrupt.ours_after():     # Train's SIGINT handler would outlive fit
                metrics = trainer.fit().metrics or {}
        finally:
            shutdown_local_ray()
    seconds = metrics["seconds_per_step"]
    samples = workers * pre.optim.batch_size / seconds
    single = (one_device or {}).get("samples_per_s")
    return {"workers": workers, "backend": metrics.get("backend"), "timed_steps": steps,
            "seconds_per_step": round(seconds, 4), "samples_per_s": round(samples, 3),
            "scaling_ratio": round(samples / single, 3) if single else None,
            "scaling_efficiency": round(samples / single / workers, 3) if single else None}

