"""Training-loop overhead: our Ray Train pretraining step against a plain PyTorch loop.

Same model, batch, crops, loss and torch threads; one Ray Train worker (so no DDP on either
side), the first steps of each run dropped as warm-up. Our steps are timed wall clock to wall
clock from the metrics log, so tracking, ``ray.train.report`` and checkpoints (three per run)
count against us, and so do Ray's own processes: a local Ray instance runs only during our
runs, so the plain loop has the machine to itself, as it would without us. The two loops
alternate over several rounds, because on a shared 2-core VM the speed of both drifts by 10-20%
over minutes, which a single plain-then-ours pair would read as overhead. The headline ratio is
throughput over all measured steps of all rounds (mean step time of plain over ours); each
round's ratio and their median are reported too, as is the fraction of our step time spent
waiting for data.

    python -m platform.bench train --preset debug
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from swinray.config import BenchConfig, ConfigError, PretrainConfig
from swinray.data.preprocess import preprocess_dataset
from swinray.models.registry import build_ssl_head
from swinray.presets import preset
from swinray.pretext.losses import ssl_loss
from swinray.pretext.views import make_ssl_batch
from swinray.resolve import resolve_pretrain
from swinray.runtime import init_ray, shutdown_local_ray
from swinray.storage import local_path, write_json
from swinray.train.crops import crop_batch
from swinray.train.pretrain import run_pretrain
from swinray.train.replay import VIEWS, step_generator
from swinray.train.state import make_optimizer
from swinray.train.trainer import worker_resources

_WARMUP_STEPS = 3
_DEFAULT_STEPS = 30         # per run; steps of both loops take about 0.7 s here


def plain_loop(cfg: PretrainConfig, paths: list[str], threads: int) -> list[float]:
    """What a user writes: the same step in a for loop, crops read inline. Seconds per step."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed)
    model = build_ssl_head(in_channels=cfg.model.in_channels, feature_size=cfg.model.feature_size,
                           roi_size=cfg.model.roi_size, window_size=cfg.model.window_size)
    optimizer, scheduler = make_optimizer(model, cfg.optim)
    weights = (cfg.pretext.rotation_weight, cfg.pretext.contrastive_weight, cfg.pretext.reconstruction_weight)
    times = []
    for step in range(cfg.optim.num_steps):
        began = time.perf_counter()
        crop = crop_batch(paths, cfg.model.roi_size, cfg.optim.batch_size, step_generator(cfg.run.seed, 0, step))
        batch = make_ssl_batch(crop, cfg.pretext.cutout_max_fraction, step_generator(cfg.run.seed, 0, step, VIEWS))
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


def step_times(rows: list[dict], num_steps: int) -> tuple[list[float], list[dict]]:
    """Our metrics log -> whole-step wall times (each step's log stamp minus the previous one's, so
    tracking, reports and checkpoints count) and the rows of the measured steps, warm-up dropped."""
    rows = rows[-num_steps:]
    stamps = [r["time"] for r in rows[_WARMUP_STEPS - 1:]]     # step k ends at stamps[k]: intervals = whole steps
    return [b - a for a, b in zip(stamps, stamps[1:])], rows[_WARMUP_STEPS:]


def _ours(pre: PretrainConfig, log) -> tuple[list[float], list[dict]]:
    summary = run_pretrain(pre, log)
    return step_times([json.loads(line) for line in open(summary["metrics_log"])], pre.optim.num_steps)


def bench_train(cfg: BenchConfig, log=print) -> dict:
    steps = cfg.budget_steps or _DEFAULT_STEPS
    if steps <= _WARMUP_STEPS + 1:
        raise ConfigError(f"budget_steps={steps}: need more than "
                          f"{_WARMUP_STEPS + 1} steps ({_WARMUP_STEPS} are warm-up)")
    pre = preset(PretrainConfig, "debug")
    every = max(1, steps // 3)          # three checkpoints, all inside the measured steps: they count against us
    pre = replace(pre, data=cfg.data, optim=replace(pre.optim, num_steps=steps),
                  run=replace(cfg.run, num_workers=1, checkpoint_every_steps=every,
                              storage=str(Path(cfg.out_dir) / "train")))
    resolved = resolve_pretrain(pre, log)
    pre = resolved.cfg
    cache = preprocess_dataset(resolved.dataset, Path(resolved.paths.cache), pre.data.max_cases, pre.run, log)
    cases = json.loads(local_path(cache["manifest"]).read_text())["cases"]
    _, threads = worker_resources(init_ray(pre.run)["cpus"], 1, gpu=False)
    shutdown_local_ray()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rounds, waits, plain_all, ours_all = [], [], [], []
    for r in range(cfg.rounds):
        log(f"round {r + 1}/{cfg.rounds}: plain PyTorch loop, {steps} steps, {threads} thread(s)")
        plain = plain_loop(pre, [c["path"] for c in cases], threads)[_WARMUP_STEPS:]
        log(f"round {r + 1}/{cfg.rounds}: ours, Ray Train, 1 worker, {steps} steps, a checkpoint every {every}")
        name = f"bench-train-{stamp}-{r + 1}"
        ours, rows = _ours(replace(pre, run=replace(pre.run, name=name, experiment=name)), log)
        shutdown_local_ray()
        waits += [row["data_wait_fraction"] for row in rows]
        plain_all += plain
        ours_all += ours
        plain_s, ours_s = statistics.mean(plain), statistics.mean(ours)
        rounds.append({"plain_steps_per_s": round(1 / plain_s, 3), "ours_steps_per_s": round(1 / ours_s, 3),
                       "throughput_ratio_ours_over_plain": round(plain_s / ours_s, 3)})
        log(f"round {r + 1}/{cfg.rounds}: {rounds[-1]}")
    result = {"command": "bench", "target": "train", "steps": steps,
              "measured_steps_per_run": steps - _WARMUP_STEPS, "rounds": rounds,
              "throughput_ratio_ours_over_plain": round(statistics.mean(plain_all) / statistics.mean(ours_all), 3),
              "median_round_ratio": statistics.median(r["throughput_ratio_ours_over_plain"] for r in rounds),
              "threads": threads, "checkpoint_every_steps": every, "feature_size": pre.model.feature_size,
              "roi_size": list(pre.model.roi_size), "batch_size": pre.optim.batch_size,
              "data_wait_fraction": round(statistics.mean(waits), 4)}
    per_round = ", ".join(str(r["throughput_ratio_ours_over_plain"]) for r in rounds)
    log(f"bench train: throughput ratio {result['throughput_ratio_ours_over_plain']} over all measured steps "
        f"(target >= 0.95); rounds {per_round}, median {result['median_round_ratio']}; "
        f"data wait {result['data_wait_fraction']:.1%} (target < 5%)")
    write_json(Path(cfg.out_dir) / "train.json", result)
    return result
