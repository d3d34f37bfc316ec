"""Progress for long commands: a tqdm bar on a terminal, a log line every few seconds otherwise.

Distributed runs are followed from the driver: ``follow_run`` reads rank 0's ``metrics.jsonl``
(on the storage every node shares) while ``trainer.fit()`` blocks, so a run under ``ray job
submit`` or across nodes shows one bar, not a line per worker step."""
from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from swinray.logtail import LogTail


class Progress:
    """Counts finished items; shows done/total, rate, time left and a few figures on stderr."""

    def __init__(self, total: int, unit: str, desc: str, log_every_s: float = 10.0, initial: int = 0,
                 clock_from_first_update: bool = False):
        self.total, self.unit, self.desc = total, unit, desc
        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=None, file=sys.stderr,
                        dynamic_ncols=True, initial=initial)
        self.done, self.last_log, self.every = initial, -math.inf, log_every_s
        self.figures = ""
        self.deadline: tuple[float, str] | None = None      # (perf_counter when a clock ends the work, its name)
        # The rate's origin (time, count): now, or the first change when start-up should not count
        self.since = None if clock_from_first_update else (time.perf_counter(), initial)

    def limit_time(self, seconds_from_now: float, name: str) -> None:
        """A clock that may end the work before its count does (``seg.max_minutes``): time left is the sooner."""
        self.deadline = (time.perf_counter() + seconds_from_now, name) if math.isfinite(seconds_from_now) else None

    def _clock_left(self, now: float, count_left_s: float) -> str:
        """``"<s> s left (<name>)"`` when the clock ends the work first (``at most`` while the rate is
        unknown), else ``""``."""
        if self.deadline is None or self.deadline[0] - now >= count_left_s:
            return ""
        bound = "at most " if math.isinf(count_left_s) else ""
        return f"{bound}{max(self.deadline[0] - now, 0):.0f} s left ({self.deadline[1]})"

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int, figures: str = "") -> None:
        """Move to ``done`` items (back too: a restarted run repeats steps), with figures such as the loss."""
        if done == self.done and figures == self.figures:
            return
        now = time.perf_counter()
        if self.since is None or done < self.done:     # a restart's repeated steps are not progress
            self.since = (now, done)
        self.done, self.figures = done, figures or self.figures
        rate = (self.done - self.since[1]) / max(now - self.since[0], 1e-9)
        count_left_s = (self.total - self.done) / rate if rate > 0 else math.inf
        clock_left = self._clock_left(now, count_left_s)
        if not self.bar.disable:        # tqdm's own estimate counts items: the clock's goes beside it
            self.bar.n = done
            self.bar.set_postfix_str(", ".join(filter(None, (self.figures, clock_left))), refresh=False)
            self.bar.refresh()
            return
        if now - self.last_log >= self.every or self.done == self.total:
            self.last_log = now
            pace = (f"{rate:.2f} {self.unit}/s, " if rate > 0 else "") + (
                clock_left or (f"{count_left_s:.0f} s left" if rate > 0 else "time left unknown"))
            print(f"[swinray] {self.desc}: {self.done}/{self.total} {self.unit}, {pace}"
                  + (f", {self.figures}" if self.figures else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _figures(row: dict) -> str:
    shown = [f"{key} {row[key]:.4f}" for key in ("loss", "val_dice") if isinstance(row.get(key), (int, float))]
    return ", ".join(shown)


def _rows(lines: list[bytes]) -> list[dict]:
    """The lines that parse as JSON objects: a line cut short or not a row is skipped alone."""
    rows = []
    for line in lines:
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _last_step(whole_lines: bytes) -> int:
    """The step of the last line that parses (0 when none): where a resumed run's log stands."""
    rows = _rows(whole_lines.splitlines())
    return rows[-1].get("step", 0) if rows else 0


@contextlib.contextmanager
def follow_run(metrics_log: Path, total_steps: int, desc: str, poll_s: float = 1.0,
               time_limit: tuple[float, str] = (math.inf, "")):
    """Show a run's steps (and its latest loss and Dice) while the block runs, from its metrics log,
    and once each ``note`` a row carries: what the workers have to tell the user (their own output
    reaches the driver only with ``--verbose``).

    ``time_limit`` (seconds, name) is a clock that may stop training before ``total_steps``, such as
    ``seg.max_minutes``: counted against the latest row's ``elapsed_s`` (resumes included) and its age,
    it is the time left when it comes sooner. Steps already in the log (a resumed run) count as done from the start.
    A log in object storage is also read from there (rank 0 may run on another node and uploads it
    every few seconds)."""
    metrics_log = Path(metrics_log)
    tail = LogTail(metrics_log)     # in object storage it reads the object: a resumed run's earlier steps
    try:
        initial = _last_step(b"\n".join(tail.read()[0]))
    except OSError:
        initial = 0
    progress = Progress(total_steps, "step", desc, initial=initial, clock_from_first_update=True)  # not Ray's start-up

    def limit_from(row: dict):
        """The clock as of ``row``, less the time since rank 0 wrote it (a read from object storage lags)."""
        if isinstance(row.get("elapsed_s"), (int, float)):
            age = max(time.time() - row["time"], 0.0) if isinstance(row.get("time"), (int, float)) else 0.0
            progress.limit_time(time_limit[0] - row["elapsed_s"] - age, time_limit[1])
    stop, noted = threading.Event(), set()

    def read_new_lines(final: bool = False):
        try:
            lines = tail.read(final)[0]
        except (OSError, ValueError):
            return
        rows = _rows(lines)
        for note in (row["note"] for row in rows if isinstance(row.get("note"), str)):
            if note not in noted:       # once: a restart's rewritten log holds it again
                noted.add(note)
                progress.bar.write(f"[swinray] {desc}: {note}", file=sys.stderr)    # above a bar, not into it
        if rows:    # one move per read: a rewritten log (a restart) read again from step 1 is where the run
                    # stands, not steps done since the last read (they would inflate the rate); the figures
                    # are the latest of each in the read (a validation row need not be the last line)
            latest = {key: value for row in rows for key, value in row.items()}
            limit_from(latest)
            progress.set(rows[-1].get("step", progress.done), _figures(latest))

    def follow():
        while not stop.wait(poll_s):
            read_new_lines()
        read_new_lines(final=True)                         # the steps logged since the last poll

    thread = threading.Thread(target=follow, name=f"progress-{desc}", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join(timeout=5)
        progress.close()
