"""Progress for long commands: a tqdm bar on a terminal, a log line every few seconds otherwise."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Counts finished items; shows done/total, rate and time left on stderr."""

    def __init__(self, total: int, unit: str, desc: str, log_every_s: float = 10.0):
        self.total, self.unit, self.desc = total, unit, desc
        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=None, file=sys.stderr,
                        dynamic_ncols=True)
        self.done, self.start, self.last_log, self.every = 0, time.perf_counter(), 0.0, log_every_s

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.bar.disable:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.every or self.done == self.total:
            self.last_log = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate else float("inf")
            print(f"[swinray] {self.desc}: {self.done}/{self.total} {self.unit}, "
                  f"{rate:.2f} {self.unit}/s, {left:.0f} s left", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
