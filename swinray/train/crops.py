"""Random ROI crops from the memory-mapped cache, prefetched on a background thread.

Only the crop is read from each case file (``np.load(mmap_mode="r")`` then slicing), so a worker
touches a few MB per sample whatever the volume size. Crops for step ``s`` come from a generator
seeded by (seed, rank, s): a resumed run draws exactly the crops an uninterrupted one would.
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from swinray.data.cache import read_case
from swinray.train.replay import step_generator


def random_crop(path: str, roi: tuple[int, int, int], generator: torch.Generator) -> np.ndarray:
    """(C, *roi) float32 crop at a random position, zero-padded where the volume is smaller."""
    image, _ = read_case(path)
    out = np.zeros((image.shape[0], *roi), dtype=np.float32)
    src, dst = [], []
    for size, want in zip(image.shape[1:], roi):
        if size >= want:
            start = int(torch.randint(0, size - want + 1, (1,), generator=generator))
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:  # centre the whole extent in the ROI
            offset = (want - size) // 2
            src.append(slice(0, size))
            dst.append(slice(offset, offset + size))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def crop_batch(paths: list[str], roi, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, *roi) crops from cases drawn with replacement."""
    picks = torch.randint(0, len(paths), (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([random_crop(paths[i], roi, generator) for i in picks]))


class CropPrefetcher:
    """Yields the batch for each step from ``start`` to ``stop``; counts time spent waiting."""

    def __init__(self, paths: list[str], roi, batch_size: int, seed: int, rank: int,
                 start: int, stop: int, depth: int = 2, pin_memory: bool = False):
        if not paths:
            raise ValueError(f"rank {rank} received no cases: the dataset has fewer cases than workers")
        self.wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def produce():
            for step in range(start, stop):
                if self._stop.is_set():
                    return
                batch = crop_batch(paths, roi, batch_size, step_generator(seed, rank, step))
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
