"""``train_fn_per_worker`` for SSL pretraining: what every Ray Train worker runs.

Each worker rebuilds the config from the plain dict Ray carries, reads its shard of the cache
(paths only; crops are read from memory-mapped files), and trains the Swin encoder with the three
proxy tasks of Tang et al. (CVPR 2022). Every ``run.checkpoint_every_steps`` it reports a
checkpoint with the whole training state; on a restart or a rerun it resumes from the latest.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import ray.train
import torch
from monai.optimizers import WarmupCosineSchedule

from models.registry import build_ssl_head
from models.weights import save_encoder
from swinray.config import PretrainConfig
from swinray.pretext.losses import ssl_loss
from swinray.pretext.pictures import CAPTION, views_side_by_side
from swinray.pretext.views import make_ssl_batch
from swinray.tracking import NullTracker, Tracker
from swinray.train.crops import CropPrefetcher, step_generator
from swinray.train.trainer import ranks_agree, start_worker

STATE_FILE = "state.pt"
ENCODER_FILE = "encoder.pt"


def _restore(model, optimizer, scheduler) -> tuple[int, str | None]:
    """Load the latest checkpoint, if any; return (next step, Aim run hash)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state.get("aim_run_hash") or None


def _report(metrics: dict, state: dict | None, encoder_of=None) -> None:
    """Report metrics; rank 0 attaches the checkpoint (and the encoder export, at the end)."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if state is not None:
            torch.save(state, Path(directory) / STATE_FILE)
            if encoder_of is not None:
                save_encoder(encoder_of, Path(directory) / ENCODER_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_fn_per_worker(config: dict) -> None:
    cfg, rank, world, device = start_worker(config, PretrainConfig)

    net = build_ssl_head(in_channels=config["in_channels"], feature_size=cfg.model.feature_size,
                         roi_size=cfg.model.roi_size, drop_path_rate=cfg.model.drop_path_rate,
                         use_checkpoint=cfg.model.gradient_checkpointing, window_size=cfg.model.window_size)
    weights = (cfg.pretext.rotation_weight, cfg.pretext.contrastive_weight, cfg.pretext.reconstruction_weight)
    # A switched-off task leaves its head without gradients, which DDP must be told about.
    model = ray.train.torch.prepare_model(
        net, parallel_strategy_kwargs={"find_unused_parameters": 0.0 in weights})
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=cfg.optim.warmup_steps, t_total=cfg.optim.num_steps)
    start, aim_hash = _restore(net, optimizer, scheduler)

    paths = [row["path"] for row in ray.train.get_dataset_shard("train").iter_rows()]
    accum = cfg.optim.grad_accum_steps
    crops = CropPrefetcher(paths, cfg.model.roi_size, cfg.optim.batch_size, cfg.run.seed, rank,
                           start * accum, cfg.optim.num_steps * accum)
    tracker = NullTracker()
    if rank == 0:
        tracker = Tracker(Path(config["run_dir"]) / "metrics.jsonl", config["aim_repo"], cfg.run.name,
                          params=config["cfg"], run_hash=aim_hash, name=cfg.run.name)
    use_amp = cfg.run.amp_bf16 and device.type == "cuda"

    for step in range(start, cfg.optim.num_steps):
        began, wait_before = time.perf_counter(), crops.wait_s
        for micro in range(accum):
            crop = crops.next().to(device, non_blocking=True)
            batch = make_ssl_batch(crop, cfg.pretext.cutout_max_fraction,
                                   step_generator(cfg.run.seed, rank, step * accum + micro, stream=1))
            sync = contextlib.nullcontext() if micro == accum - 1 or world == 1 else model.no_sync()
            with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(torch.cat([batch["view1"], batch["view2"]]))
                halves = [tuple(t.float().chunk(2)) for t in out]
                loss, parts = ssl_loss(tuple(h[0] for h in halves), tuple(h[1] for h in halves),
                                       batch, weights, cfg.pretext.temperature)
                (loss / accum).backward()
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
            state = None
            if rank == 0:
                tracker.log_image("pretext_views", views_side_by_side(
                    batch["target1"][0, 0], batch["view1"][0, 0], halves[2][0][0, 0]), done, caption=CAPTION)
                state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                         "step": done, "aim_run_hash": tracker.run_hash or ""}
            final = done == cfg.optim.num_steps
            in_sync = {"weights_in_sync": ranks_agree(net)} if final else {}   # every rank: a collective
            tracker.checkpointed()
            _report({**metrics, **in_sync, "step": done, "aim_error": tracker.aim_error or ""}, state,
                    encoder_of=net if final and rank == 0 else None)
    if start >= cfg.optim.num_steps:  # a rerun of a finished run: report where it stands
        _report({"step": start, "aim_error": ""}, None)
    crops.close()
    tracker.close()
