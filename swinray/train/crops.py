"""Random ROI crops from the memory-mapped cache, prefetched on a background thread.

Only the crop is read from each case file (``np.load(mmap_mode="r")`` then slicing), so a worker
touches a few MB per sample whatever the volume size. Crops for step ``s`` come from a generator
seeded by (seed, rank, s): a resumed run draws exactly the crops an uninterrupted one would.

Crops are centred on a body voxel (``body_above``): a crop of air around a head-and-neck CT has no
orientation to predict, no structure to contrast and nothing to inpaint. The preprocessing crops each
case to the body's bounding box, but the box of a neck with its shoulders is still mostly air.
"""
from __future__ import annotations

import functools
import queue
import threading
import time

import numpy as np
import torch

from swinray.data.cache import read_case
from swinray.data.transforms import normalised_body_threshold
from swinray.train.replay import step_generator

BODY_GRID = 8           # body voxels are found on every 8th voxel per axis: 1/512 of a case, read once
MRI_BODY = "nonzero"    # ``body_above`` for z-scored MRI: the body is every non-zero voxel


@functools.lru_cache(maxsize=16384)
def body_voxels(path: str, body_above: float | str) -> np.ndarray:
    """(N, 3) positions on a coarse grid where the first channel is body: above ``body_above`` (CT), or
    non-zero (``MRI_BODY``). Read once per case and worker: a few pages of the memory map, a few kB kept
    (a case of 300 x 300 x 160: 28 kB)."""
    image, _ = read_case(path)
    coarse = np.asarray(image[0, ::BODY_GRID, ::BODY_GRID, ::BODY_GRID])
    body = coarse != 0 if body_above == MRI_BODY else coarse > body_above
    return np.argwhere(body).astype(np.int32) * BODY_GRID


def body_centre(path: str, shape: tuple[int, ...], body_above: float | str,
                generator: torch.Generator) -> list[int]:
    """A random voxel of the body: a coarse body voxel and a random offset within its grid cell; a
    case with no body voxel on the grid gets a random voxel anywhere."""
    voxels = body_voxels(path, body_above)
    if not len(voxels):
        return [int(torch.randint(0, side, (1,), generator=generator)) for side in shape]
    base = voxels[int(torch.randint(0, len(voxels), (1,), generator=generator))].tolist()
    offset = torch.randint(0, BODY_GRID, (3,), generator=generator).tolist()
    return [min(b + o, side - 1) for b, o, side in zip(base, offset, shape)]


def random_crop(path: str, roi: tuple[int, int, int], generator: torch.Generator,
                body_above: float | str | None = None) -> np.ndarray:
    """(C, *roi) float32 crop, zero-padded where the volume is smaller: at a random position, or around
    a random body voxel when ``body_above`` (``crop_body``'s) is given."""
    image, _ = read_case(path)
    out = np.zeros((image.shape[0], *roi), dtype=np.float32)
    centre = body_centre(path, image.shape[1:], body_above, generator) if body_above is not None else None
    src, dst = [], []
    for axis, (size, want) in enumerate(zip(image.shape[1:], roi)):
        if size >= want:
            if centre is None:
                start = int(torch.randint(0, size - want + 1, (1,), generator=generator))
            else:
                start = min(max(centre[axis] - want // 2, 0), size - want)
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:  # centre the whole extent in the ROI
            offset = (want - size) // 2
            src.append(slice(0, size))
            dst.append(slice(offset, offset + size))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def crop_body(task) -> float | str:
    """What ``body_above`` is for a task's cached cases: the normalised CT body edge, or ``MRI_BODY``."""
    threshold = normalised_body_threshold(task)
    return MRI_BODY if threshold is None else threshold


def crop_batch(paths: list[str], roi, batch_size: int, generator: torch.Generator,
               body_above: float | str | None = None) -> torch.Tensor:
    """(B, C, *roi) crops from cases drawn with replacement."""
    picks = torch.randint(0, len(paths), (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([random_crop(paths[i], roi, generator, body_above) for i in picks]))


class CropPrefetcher:
    """Yields the batch for each step from ``start`` to ``stop``; counts time spent waiting."""

    def __init__(self, paths: list[str], roi, batch_size: int, seed: int, rank: int,
                 start: int, stop: int, depth: int = 2, pin_memory: bool = False,
                 body_above: float | str | None = None):
        if not paths:
            raise ValueError(f"rank {rank} received no cases: the dataset has fewer cases than workers")
        self.wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def produce():
            for step in range(start, stop):
                if self._stop.is_set():
                    return
                batch = crop_batch(paths, roi, batch_size, step_generator(seed, rank, step), body_above)
                if pin_memory:          # page-locked: the copy to the GPU overlaps the step (non_blocking)
                    batch = batch.pin_memory()
                self._queue.put(batch)

        self._thread = threading.Thread(target=produce, daemon=True, name="crop-prefetch")
        self._thread.start()

    def next(self) -> torch.Tensor:
        start = time.perf_counter()
        batch = self._queue.get()
        self.wait_s += time.perf_counter() - start
        return batch

    def close(self) -> None:
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()
