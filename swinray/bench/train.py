"""Training-loop overhead: our Ray Train pretraining step against a plain PyTorch loop.

Same model, batch, crops, loss and torch threads; one Ray Train worker (so no DDP on either
side), the first steps dropped as warm-up. Reports steps/s of both, their ratio, and the
fraction of our step time spent waiting for data.

    python -m platform.bench train --preset debug
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from monai.optimizers import WarmupCosineSchedule

from models.registry import build_ssl_head
from swinray.config import BenchConfig, PreprocessConfig, PretrainConfig, preset
from swinray.data.cache import write_json
from swinray.data.preprocess import run_preprocess
from swinray.pretext.losses import ssl_loss
from swinray.pretext.views import make_ssl_batch
from swinray.runtime import init_ray
from swinray.train.crops import crop_batch, step_generator
from swinray.train.pretrain import run_pretrain
from swinray.train.trainer import worker_resources

_WARMUP_STEPS = 3


def plain_loop(cfg: PretrainConfig, paths: list[str], in_channels: int, threads: int) -> list[float]:
    """What a user writes: the same step in a for loop, crops read inline. Seconds per step."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed)
    model = build_ssl_head(in_channels=in_channels, feature_size=cfg.model.feature_size,
                           roi_size=cfg.model.roi_size, window_size=cfg.model.window_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = WarmupCosineSchedule(optimizer, cfg.optim.warmup_steps, cfg.optim.num_steps)
    weights = (cfg.pretext.rotation_weight, cfg.pretext.contrastive_weight, cfg.pretext.reconstruction_weight)
    times = []
    for step in range(cfg.optim.num_steps):
        began = time.perf_counter()
        crop = crop_batch(paths, cfg.model.roi_size, cfg.optim.batch_size, step_generator(cfg.run.seed, 0, step))
        batch = make_ssl_batch(crop, cfg.pretext.cutout_max_fraction, step_generator(cfg.run.seed, 0, step, 1))
        out = model(torch.cat([batch["view1"], batch["view2"]]))
        halves = [tuple(t.chunk(2)) for t in out]
        loss, _ = ssl_loss(tuple(h[0] for h in halves), tuple(h[1] for h in halves), batch, weights,
                           cfg.pretext.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return times


def bench_train(cfg: BenchConfig, log=print) -> dict:
    pre = preset(PretrainConfig, "debug")
    pre = replace(pre, data=cfg.data, run=replace(cfg.run, name="bench-train", num_workers=1,
                                                   storage=str(Path(cfg.out_dir) / "train")))
    cache = run_preprocess(PreprocessConfig(data=pre.data, run=pre.run), log)
    cases = json.loads(Path(cache["manifest"]).read_text())["cases"]
    _, threads = worker_resources(init_ray(pre.run)["cpus"], 1, gpu=False)
    log(f"plain PyTorch loop: {pre.optim.num_steps} steps, {threads} thread(s)")
    plain = plain_loop(pre, [c["path"] for c in cases], cases[0]["shape"][0], threads)
    log(f"ours: Ray Train, 1 worker, {pre.optim.num_steps} steps")
    summary = run_pretrain(pre, log)
    rows = [json.loads(line) for line in open(summary["metrics_log"])][-pre.optim.num_steps:]
    ours = [pre.optim.batch_size / r["samples_per_s"] for r in rows]
    plain_s, ours_s = (statistics.median(t[_WARMUP_STEPS:]) for t in (plain, ours))
    result = {"command": "bench", "target": "train", "steps": pre.optim.num_steps, "threads": threads,
              "feature_size": pre.model.feature_size, "roi_size": list(pre.model.roi_size),
              "batch_size": pre.optim.batch_size, "plain_steps_per_s": round(1 / plain_s, 3),
              "ours_steps_per_s": round(1 / ours_s, 3), "ratio": round(plain_s / ours_s, 3),
              "data_wait_fraction": round(statistics.mean(r["data_wait_fraction"] for r in rows[_WARMUP_STEPS:]), 4)}
    write_json(Path(cfg.out_dir) / "train.json", result)
    return result
