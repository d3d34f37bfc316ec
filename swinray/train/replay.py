"""Randomness as a function of (seed, rank, step), so a resumed run redraws what an uninterrupted one drew.

A checkpoint restores weights, optimizer and schedule; everything random after it (which cases a
step trains on, their crops and augmentations, drop-path and the pretext views) is drawn from
generators seeded by the step itself, never from a stream that ran since the start. So resuming
at step k replays steps k+1, k+2, ... exactly (up to float noise), on CPU and GPU alike:
``torch.manual_seed`` also seeds every CUDA device.
"""
from __future__ import annotations

import torch

CROPS, VIEWS, GLOBAL, AUGMENT, ORDER = range(5)  # independent streams of one step (ORDER: of one epoch)
_STREAMS = 8


def step_seed(seed: int, rank: int, step: int, stream: int = CROPS) -> int:
    """A 63-bit seed that depends only on (seed, rank, step, stream)."""
    return (((seed * 1_000_003 + rank) * 1_000_033 + step) * _STREAMS + stream) % (2 ** 63)


def step_generator(seed: int, rank: int, step: int, stream: int = CROPS) -> torch.Generator:
    """A fresh generator whose draws depend only on (seed, rank, step, stream)."""
    return torch.Generator().manual_seed(step_seed(seed, rank, step, stream))


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch's global generators (CPU and every CUDA device) for ``step``: drop-path and
    anything else drawing from them. The checkpoint holds rank 0's generator state too, but every
    rank restores that one; seeding by rank and step keeps each rank's draws its own after a restore
    (and makes them differ between ranks, which shared the start seed)."""
    torch.manual_seed(step_seed(seed, rank, step, GLOBAL))


def batch_indices(num_items: int, batch_size: int, seed: int, rank: int, step: int) -> list[int]:
    """The items of ``step``'s batch: epochs are seeded permutations of all items, read in order,
    so every item is seen once per epoch and the batch of any step is known without replaying the
    steps before it."""
    first, last = step * batch_size, (step + 1) * batch_size - 1
    orders = {epoch: torch.randperm(num_items, generator=step_generator(seed, rank, epoch, ORDER))
              for epoch in range(first // num_items, last // num_items + 1)}
    return [int(orders[p // num_items][p % num_items]) for p in range(first, last + 1)]
