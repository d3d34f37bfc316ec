"""``train_fn_per_worker`` for SSL pretraining: what every Ray Train worker runs.

Each worker rebuilds the config from the plain dict Ray carries, takes every world-th case of the
run's ``split.json`` (paths only; crops are read from memory-mapped files), and trains the Swin encoder with the three
proxy tasks of Tang et al. (CVPR 2022). Every ``run.checkpoint_every_steps`` it reports a
checkpoint with the whole training state; on a restart or a rerun it resumes from the latest and,
its randomness being drawn per step (``replay``), redoes the steps after it as they first ran.
"""
from __future__ import annotations

import contextlib
import time

import ray.train
import torch

from swinray.config import PretrainConfig
from swinray.data.tasks import task_from_dict
from swinray.models.registry import build_ssl_head
from swinray.models.weights import save_encoder
from swinray.pretext.pictures import CAPTION, views_side_by_side
from swinray.tracking import NullTracker, Tracker
from swinray.train.crops import CropPrefetcher, crop_body
from swinray.train.replay import VIEWS, seed_step, step_generator
from swinray.train.state import ENCODER_FILE, make_optimizer, report, restore, training_state
from swinray.train.steps import pretext_weights, ssl_forward_backward
from swinray.train.trainer import cached_task, case_files, ranks_agree, start_worker


def train_fn_per_worker(config: dict) -> None:
    cfg, paths, rank, world, device = start_worker(config, PretrainConfig)

    net = build_ssl_head(in_channels=cfg.model.in_channels, feature_size=cfg.model.feature_size,
                         roi_size=cfg.model.roi_size, drop_path_rate=cfg.model.drop_path_rate,
                         use_checkpoint=cfg.model.gradient_checkpointing, window_size=cfg.model.window_size)
    weights = pretext_weights(cfg.pretext)
    # A switched-off task leaves its head without gradients, which DDP must be told about.
    model = ray.train.torch.prepare_model(
        net, parallel_strategy_kwargs={"find_unused_parameters": 0.0 in weights})
    optimizer, scheduler = make_optimizer(model, cfg.optim)
    restored = restore(net, optimizer, scheduler) or {}
    start = restored.get("step", 0)

    paths_of_cases = case_files(paths, "training")[rank::world]     # the same cases on every (re)start
    accum = cfg.optim.grad_accum_steps
    body_above = crop_body(task_from_dict(cached_task(paths)))
    crops = CropPrefetcher(paths_of_cases, cfg.model.roi_size, cfg.optim.batch_size, cfg.run.seed, rank,
                           start * accum, cfg.optim.num_steps * accum, pin_memory=device.type == "cuda",
                           body_above=body_above)
    tracker = NullTracker()
    if rank == 0:
        tracker = Tracker(paths.run_dir, resumed_at=start)     # the driver copies it into Aim
    use_amp = cfg.run.amp_bf16 and device.type == "cuda"

    for step in range(start, cfg.optim.num_steps):
        began, wait_before = time.perf_counter(), crops.wait_s
        seed_step(cfg.run.seed, rank, step)         # drop-path: the same draws when this step is redone
        for micro in range(accum):
            crop = crops.next().to(device, non_blocking=True)
            sync = contextlib.nullcontext() if micro == accum - 1 or world == 1 else model.no_sync()
            with sync:
                loss, parts, batch, halves = ssl_forward_backward(
                    model, crop, cfg.pretext, step_generator(cfg.run.seed, rank, step * accum + micro, VIEWS),
                    use_amp, accumulation=accum)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        seconds = time.perf_counter() - began
        metrics = {"loss": loss.item(), **{f"loss_{k}": float(v) for k, v in parts.items()},
                   "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "samples_per_s": world * accum * cfg.optim.batch_size / seconds,
                   "data_wait_fraction": (crops.wait_s - wait_before) / seconds}
        tracker.log(metrics, step + 1)
        done = step + 1
        if done % cfg.run.checkpoint_every_steps == 0 or done == cfg.optim.num_steps:
            final = done == cfg.optim.num_steps
            state, files = None, {}
            if rank == 0:
                tracker.log_image("pretext_views", views_side_by_side(
                    batch["target1"][0, 0], batch["view1"][0, 0], halves[2][0][0, 0]), done, caption=CAPTION)
                state = training_state(net, optimizer, scheduler, done)
                if final:
                    files = {ENCODER_FILE: lambda path: save_encoder(net, path)}
            in_sync = {"weights_in_sync": ranks_agree(net)} if final else {}   # every rank: a collective
            tracker.checkpointed()
            report({**metrics, **in_sync, "step": done}, state, files)
    if start >= cfg.optim.num_steps:  # a rerun of a finished run: report where it stands
        report({"step": start})
    crops.close()
    tracker.close()
