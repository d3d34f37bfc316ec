"""Tracking, the driver's side: run folders copied into a local Aim repo while training runs.

Workers record to run storage only (``swinray.tracking``); the command's driver (on a cluster, on
the head, where ``ray job submit`` runs it) starts one writer process (``swinray.aim_writer``) that
copies the run folders into its Aim repo every few seconds and finishes the copy when the block
ends. ``aim up --host 127.0.0.1`` serves that repo, reached through an SSH tunnel: no Aim server
has to listen where other machines can reach it. A laptop runs the same path, so what is tested
here is what runs on a cluster.

Any failure of the writer (repo deleted, unwritable, a run locked by another process, the writer
gone) sets ``aim_error`` and warns once; training never waits on Aim, and the run folder keeps
everything, so a rerun of the command copies it into Aim again.

    with mirror_to_aim("outputs", runs=[run_dir], log=log) as mirror:
        trainer.fit()
    mirror.aim_error
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

from swinray import interrupt

IDLE_CLOSE_S = 120.0         # a sweep's trials end without telling the driver: idle this long is ended
POLL_S = 5.0                 # how often the writer copies what is new: how far Aim is behind the run
FINISH_TIMEOUT_S = 600.0     # for the last copy (every trial of a sweep in object storage) and closing
INTERRUPTED_FINISH_TIMEOUT_S = 60.0   # the same once the command was interrupted: its JSON line comes soon
EXIT_TIMEOUT_S = 10.0        # after it: then the writer is killed (Aim's exit handler can hang)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class AimMirror:
    def __init__(self, repo: str, warn: Callable[[str], None] | None = None, poll_s: float = POLL_S):
        self.repo, self.aim_error = repo, None
        self._warn = warn or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=2))
        self._lock, self._finished = threading.Lock(), threading.Event()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                        os.environ.get("PYTHONPATH")]))}
        # Its own session: a Ctrl-C at the terminal is the driver's, which then finishes the writer
        self.process = subprocess.Popen([sys.executable, "-m", "swinray.aim_writer", repo, str(poll_s)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        start_new_session=True)
        self._listener = threading.Thread(target=self._listen, name="aim-mirror", daemon=True)
        self._listener.start()

    def follow(self, run_dir: str | Path) -> None:
        """Copy one run folder; its Aim run stays open until ``close``."""
        self._send({"follow": str(run_dir)})

    def follow_folder(self, folder: str | Path, idle_close_s: float = IDLE_CLOSE_S) -> None:
        """Copy every run folder that appears under ``folder`` (a sweep's trials); the Aim run of one
        that logs nothing for ``idle_close_s`` is closed (an ended trial), and opened again if it goes on."""
        self._send({"follow_folder": str(folder), "idle_close_s": idle_close_s})

    def _send(self, command: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):   # the writer has ended: its error is reported already
            pass

    def _listen(self) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "error" in message:
                self._fail(message["error"])
            if message.get("finished"):
                self._finished.set()
        code = self.process.wait()
        if not self._finished.is_set():
            self._fail(f"the Aim writer process ended (exit code {code})")

    def _fail(self, error: str) -> None:
        with self._lock:
            if self.aim_error is not None:
                return
            self.aim_error = error
        self._warn(f"Aim tracking is off for the rest of this run ({error}) into {self.repo}; metrics and "
                   "pictures stay in the run's folder (metrics.jsonl, images.jsonl), and a rerun of the command "
                   "copies them into Aim again")

    def close(self, timeout_s: float | None = None) -> None:
        """The last copy and every Aim run closed; returns within about ``timeout_s`` whatever Aim does
        (``FINISH_TIMEOUT_S``, or ``INTERRUPTED_FINISH_TIMEOUT_S`` once a stop signal came). A stop
        signal while it waits kills the writer: a rerun copies what it had not."""
        if timeout_s is None:
            timeout_s = INTERRUPTED_FINISH_TIMEOUT_S if interrupt.received() else FINISH_TIMEOUT_S
        self._send({"finish": True})
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            deadline = time.monotonic() + timeout_s
            while not self._finished.is_set() and self._listener.is_alive() and time.monotonic() < deadline:
                self._finished.wait(0.2)
            if not self._finished.is_set() and self._listener.is_alive():
                self._fail(f"the Aim writer did not finish within {timeout_s:.0f} s")
            try:
                self.process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill()
        except BaseException:           # interrupted again while waiting: never leave the writer behind
            if not self._finished.is_set():
                self._fail("the command was stopped before the Aim writer finished its last copy")
            self._kill()
            raise
        self._listener.join(EXIT_TIMEOUT_S)

    def _kill(self) -> None:
        self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(EXIT_TIMEOUT_S)


@contextlib.contextmanager
def mirror_to_aim(repo: str, runs: Iterable[str | Path] = (), folders: Iterable[str | Path] = (),
                  log: Callable[[str], None] | None = None, poll_s: float = POLL_S):
    """Copy ``runs`` (run folders) and the run folders under ``folders`` into the Aim repo ``repo``
    while the block runs, and finish the copy when it ends, however it ends. A failure is one
    ``warning: ...`` through ``log`` (a RuntimeWarning without it) and the mirror's ``aim_error``."""
    mirror = AimMirror(repo, (lambda message: log(f"warning: {message}")) if log else None, poll_s)
    try:
        for run_dir in runs:
            mirror.follow(run_dir)
        for folder in folders:
            mirror.follow_folder(folder)
        yield mirror
    finally:
        mirror.close()
