"""Training state shared by pretraining, fine-tuning and the training benchmark: file names, the
optimizer and schedule, the checkpoint a Ray Train worker reports, and the restore that reads it back.

A checkpoint is a folder: ``state.pt`` (model, optimizer, schedule, random states, step and the
loop's own entries) plus the files a loop exports beside it (``encoder.pt``, ``model.pt``). Rank 0
attaches it to ``ray.train.report``; every rank reports the same metrics. Rebuilding the trainer
with the same run name and storage hands the latest one back (``restore``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Collection

import ray.train
import torch
from monai.optimizers import WarmupCosineSchedule

from swinray.config import OptimConfig

STATE_FILE = "state.pt"
ENCODER_FILE = "encoder.pt"             # pretraining's export: the Swin encoder's weights
MODEL_FILE = "model.pt"                 # fine-tuning's export: the best model so far, self-contained


def make_optimizer(model: torch.nn.Module, optim: OptimConfig, scaled: Collection[torch.nn.Parameter] = (),
                   lr_scale: float = 1.0):
    """AdamW with a linear warm-up then cosine decay over ``optim.num_steps`` (as the paper). The
    ``scaled`` parameters (pretrained ones) learn at ``lr_scale`` times ``optim.lr``, on the same schedule."""
    slow = {id(p) for p in scaled} if lr_scale != 1.0 else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in slow]}]
    if slow:
        groups.append({"params": [p for p in model.parameters() if id(p) in slow], "lr": optim.lr * lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    return optimizer, WarmupCosineSchedule(optimizer, warmup_steps=optim.warmup_steps, t_total=optim.num_steps)


def training_state(model: torch.nn.Module, optimizer, scheduler, step: int, **entries) -> dict:
    """Everything a restart needs to go on from ``step``; ``entries`` are the loop's own (plain values)."""
    random = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():      # this worker's device only: a restart may see other devices
        random["cuda_rng"] = torch.cuda.get_rng_state()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            **random, "step": step, **entries}


def restore(model: torch.nn.Module, optimizer, scheduler, files: tuple[str, ...] = ()) -> dict | None:
    """Load the latest checkpoint of this run into ``model``, ``optimizer`` and ``scheduler``; None if
    there is none. Returns what it restored: the step and the loop's own entries, plus each of
    ``files`` (other files of the checkpoint) as loaded."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        loaded = {name: torch.load(Path(directory) / name, map_location="cpu", weights_only=True) for name in files}
    model.load_state_dict(state.pop("model"))
    optimizer.load_state_dict(state.pop("optimizer"))
    schedule = {k: getattr(scheduler, k) for k in ("warmup_steps", "t_total") if hasattr(scheduler, k)}
    scheduler.load_state_dict(state.pop("scheduler"))
    vars(scheduler).update(schedule)    # the config that runs sets the schedule: a run resumed to go on longer
    torch.set_rng_state(state.pop("torch_rng"))
    cuda_rng = state.pop("cuda_rng", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    return {**state, **loaded}


def report(metrics: dict, state: dict | None = None, files: dict[str, Callable[[Path], object]] | None = None) -> None:
    """Report ``metrics``; with ``state`` (rank 0) attach a checkpoint of it and of ``files``, each
    written by its function into the checkpoint folder (``{MODEL_FILE: lambda path: save(...)}``)."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if state is not None:
            torch.save(state, Path(directory) / STATE_FILE)
            for name, write in (files or {}).items():
                write(Path(directory) / name)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)
