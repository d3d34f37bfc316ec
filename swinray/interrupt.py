"""Ctrl-C and SIGTERM (``ray job stop``, a scheduler's stop) end every command the same way: its JSON
line says ``"ok": false, "interrupted": true``, the exit code is 130, and the same command run again
resumes. ``cli.main`` watches for them; the training drivers say what the run had reached.

Ray replaces the handlers along the way, each for reasons of its own (Ray 2.60):
- ``ray.init`` installs a SIGTERM handler that exits at once (and stops a local instance);
- Ray Train V2's ``trainer.fit()`` installs a SIGINT handler that aborts the run, ends in
  ``sys.exit(0)`` (or the controller's death), and stays installed after ``fit`` returns;
- Ray Tune's ``Tuner.fit()`` installs one that stops the experiment, saves it and returns normally.
So whether a stop signal came is read from a wakeup fd (Python writes the number of every signal it
handles there, whichever handler runs), SIGTERM does what the SIGINT handler of the moment does
(Train's and Tune's graceful stops included), and ``ours_after`` puts our handlers back after a
library call.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130                     # 128 + SIGINT, what shells report for Ctrl-C

_active: list[Watch] = []           # the command's watch, while it runs


class Interrupted(KeyboardInterrupt):
    """A stop signal ended the work; ``reached``: what it had got to (run folder, steps, trials)."""

    def __init__(self, reached: dict):
        super().__init__(reached)
        self.reached = reached


def _sigterm(signum, frame):
    """SIGTERM stops as Ctrl-C does: through the SIGINT handler in place (Train's or Tune's graceful
    stop while they run, else KeyboardInterrupt)."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):       # SIGINT ignored here (a background job): SIGTERM still stops
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


class Watch:
    """While a command runs: SIGINT raises KeyboardInterrupt, SIGTERM too, and ``signal`` is the
    first stop signal received, whoever handled it. Only the main thread can handle signals: in
    another one this watches nothing. A signal the process was started ignoring stays ignored."""

    signal: int | None = None

    def __enter__(self) -> Watch:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._wakeup_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _sigterm}
        for s in STOP_SIGNALS:
            if self._handlers[s] is not signal.SIG_IGN:
                signal.signal(s, ours[s])
        _active.append(self)
        return self

    def received(self) -> int | None:
        """The first stop signal since the watch began, or None."""
        if self in _active:
            with contextlib.suppress(BlockingIOError):
                while data := os.read(self._read, 512):
                    self.signal = self.signal or next((s for s in data if s in STOP_SIGNALS), None)
        return self.signal

    def __exit__(self, *exc) -> None:
        if self not in _active:
            return
        self.received()
        _active.remove(self)
        signal.set_wakeup_fd(self._wakeup_fd)
        for s, handler in self._handlers.items():
            signal.signal(s, handler)
        os.close(self._read)
        os.close(self._write)


def received() -> int | None:
    """The stop signal the running command received, or None (also when no command is watching)."""
    return _active[-1].received() if _active else None


def name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def ours_after():
    """Around a library call that installs its own handlers (``ray.init``, Train's and Tune's
    ``fit``): the command's handlers are back after it. Outside a command, nothing changes."""
    if not _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def interruptible(reached: Callable[[], dict]):
    """Around a blocking Ray call that a stop signal ends Ray's way (Train's ``sys.exit(0)``, a
    dead controller's error, a normal return): once a stop signal came, however the call ended,
    it raises ``Interrupted`` with ``reached()``."""
    with ours_after():
        try:
            yield
        except BaseException as e:
            if received() is None:
                raise
            raise Interrupted(_what(reached)) from e
    if received() is not None:
        raise Interrupted(_what(reached))


def _what(reached: Callable[[], dict]) -> dict:
    """``reached()``, or nothing when the stop came before what it reports existed (a name not yet bound)."""
    try:
        return reached()
    except Exception:
        return {}
