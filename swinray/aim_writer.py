"""The one process that writes to Aim: it copies run folders into a local Aim repo as they grow.

A run folder holds what rank 0 recorded (``metrics.jsonl``, ``images.jsonl`` and the PNGs it
names, see ``swinray.tracking``) and the run's resolved ``config.json``: the Aim run's experiment,
name and hyperparameters. The writer reads them every few seconds (from object storage when the
folder is mirrored there) and tracks what is new; ``aim_run.json`` in the folder keeps the Aim
run's hash and how far the logs were copied, so a resumed run, or a rerun on another machine,
continues the same Aim run from where the copy stopped.

The driver starts it (``swinray.aim_mirror``): commands come as JSON lines on stdin, and a failure
(the first ends all tracking) or the end leave as JSON lines on its original stdout. It is a
process of its own because Aim 3.29 cannot be trusted to end a process cleanly: with its repo
deleted under an open run, writes still "succeed" and, at exit, Aim's clean-up thread dies on the
missing files while its exit handler waits for that thread for ever. The driver's process never
imports Aim; this one leaves with ``os._exit`` once Aim has failed.

    python -m swinray.aim_writer REPO POLL_S      # what AimMirror runs
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from swinray.errors import StorageError
from swinray.logtail import LogTail
from swinray.resolve import CONFIG_FILE
from swinray.storage import fetch, fetch_named, write_json
from swinray.tracking import IMAGES_FILE, METRICS_FILE

CURSOR_FILE = "aim_run.json"        # in a run folder: its Aim run and how far its logs were copied
NOT_METRICS = ("step", "time", "context")


@dataclass
class Followed:
    """A run folder, its Aim run (open, or None) and where its logs were read to."""
    run_dir: Path
    idle_close_s: float
    run_hash: str | None
    tails: dict[str, LogTail]
    run: object = None
    active_at: float = field(default_factory=time.monotonic)


def index_run(repo, run_hash: str) -> bool:
    """Make a closed run visible to Aim's query SDK now; True if it was indexed.

    Aim 3.29 answers ``Repo.get_run``, ``iter_runs`` and ``query_metrics`` from an index that only
    ``aim up`` and ``aim storage reindex`` fill. While ``aim up`` runs it holds the index (and
    indexes the run itself), so a failure here is expected and silent."""
    try:
        from aim.sdk.index_manager import RepoIndexManager
        RepoIndexManager.get_index_manager(repo).index(run_hash)
        return True
    except Exception:
        return False


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _rows(lines: list[bytes]) -> list[dict]:
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:              # a line a crash cut short: the next one is whole
            continue
    return [row for row in rows if isinstance(row, dict)]


def _read(tail: LogTail, final: bool) -> list[dict]:
    """New rows of a log; none while run storage cannot be read (the next pass tries again)."""
    try:
        return _rows(tail.read(final)[0])
    except OSError:
        return []


class AimWriter:
    def __init__(self, repo: str):
        from aim import Repo
        if not Repo.exists(repo):
            Repo.from_path(repo, init=True)
        self.repo_path, self.repo = repo, Repo.from_path(repo)
        self.runs: dict[Path, Followed] = {}
        self.wanted: list[Path] = []    # run folders to copy, given one by one
        self.folders: dict[Path, float] = {}   # folders whose every run folder is copied: their idle_close_s

    def follow(self, run_dir: Path) -> None:
        """Copy ``run_dir`` from now on, its Aim run open until the end (opened at once: its
        hyperparameters show before its first step)."""
        self.wanted.append(run_dir)
        followed = self._followed(run_dir, math.inf)
        if followed is not None and followed.run is None:
            self._open(followed)

    def follow_folder(self, folder: Path, idle_close_s: float) -> None:
        """Copy every run folder under ``folder`` (a sweep's trials) as it appears; close the Aim run
        of one idle for ``idle_close_s``."""
        self.folders[folder] = idle_close_s

    def _followed(self, run_dir: Path, idle_close_s: float) -> Followed | None:
        """The run folder's record, made on first sight; None until its config.json exists."""
        if run_dir in self.runs:
            return self.runs[run_dir]
        try:                            # run storage unreadable now: the next pass tries again
            if not fetch(run_dir / CONFIG_FILE):
                return None
            cursor = json.loads((run_dir / CURSOR_FILE).read_text()) if fetch(run_dir / CURSOR_FILE, refresh=True) \
                else {}
        except (OSError, StorageError, ValueError):   # StorageError: this node's mirror refused the download
            return None
        cursor = cursor if isinstance(cursor, dict) else {}
        known = bool(cursor.get("hash")) and self.repo.run_exists(str(cursor["hash"]))   # else a new run from line 1
        tails = {name: LogTail(run_dir / name) for name in (METRICS_FILE, IMAGES_FILE)}
        for name, tail in tails.items():
            copied = cursor.get(name) if known else None
            if isinstance(copied, dict):
                tail.offset, tail.last = int(copied.get("offset", 0)), str(copied.get("last", "")).encode()
        self.runs[run_dir] = Followed(run_dir, idle_close_s, cursor["hash"] if known else None, tails)
        return self.runs[run_dir]

    def _open(self, followed: Followed) -> None:
        from aim import Run
        cfg = json.loads((followed.run_dir / CONFIG_FILE).read_text())
        followed.run = Run(run_hash=followed.run_hash, repo=self.repo_path, experiment=cfg["run"]["experiment"],
                           system_tracking_interval=None, log_system_params=False,   # this machine's, not the run's
                           capture_terminal_logs=False)
        followed.run.name = cfg["run"]["name"]         # Aim lists runs by name: the run's or the trial's
        followed.run["hparams"] = cfg                  # the resolved config, as saved (a resumed run's, now)
        followed.run_hash, followed.active_at = followed.run.hash, time.monotonic()
        self._save_cursor(followed)

    def _save_cursor(self, followed: Followed) -> None:
        """Everything before the tails' offsets is in the Aim run: where a later writer goes on."""
        try:
            write_json(followed.run_dir / CURSOR_FILE, {"hash": followed.run_hash,
                                                       **{name: tail.state() for name, tail in followed.tails.items()}})
        except (OSError, StorageError):  # run storage is not ours to report on (write_json names a refused or
            pass                         # full place as a StorageError): a later writer copies from line 1

    def _copy(self, followed: Followed, final: bool) -> None:
        metrics, images = (_read(followed.tails[name], final) for name in (METRICS_FILE, IMAGES_FILE))
        if followed.run is None and (metrics or images or followed.run_hash is None):
            self._open(followed)        # new lines, or a new run: shown at once
        for row in metrics:
            context = row["context"] if isinstance(row.get("context"), dict) else {}
            for name, value in row.items():
                if name not in NOT_METRICS and _is_number(value):
                    followed.run.track(value, name=name, step=row.get("step"), context=context)
        for row in images:
            picture = self._picture(followed.run_dir, row)
            if picture is not None:
                followed.run.track(picture, name=row["name"], step=row.get("step"))
        if metrics or images:
            followed.active_at = time.monotonic()

    @staticmethod
    def _picture(run_dir: Path, row: dict):
        """The Aim image an images.jsonl row names, or None if its file cannot be read."""
        from aim import Image
        from PIL import Image as PILImage
        file = Path(str(row.get("file", "")))
        if file.is_absolute() or ".." in file.parts or not row.get("name"):
            return None
        try:
            if not (run_dir / file).resolve().is_relative_to(run_dir.resolve()):
                return None             # a link out of the run's folder
            fetch(run_dir / file)
            with PILImage.open(run_dir / file) as picture:
                return Image(picture.convert("RGB"), caption=str(row.get("caption", "")))
        except (OSError, StorageError, PILImage.DecompressionBombError):   # skipped: no failure of Aim
            return None

    def _check(self, followed: Followed) -> None:
        """Aim keeps writing into a run whose repo was deleted, without an error: look for its files."""
        root = Path(self.repo.path)
        for path in (root / "meta" / "chunks" / followed.run_hash, root / "locks" / f"{followed.run_hash}.softlock"):
            if not path.exists():
                raise FileNotFoundError(f"{path} is gone: the Aim repo {self.repo_path} was deleted or moved "
                                        f"under run {followed.run_hash}")

    def _close(self, followed: Followed) -> None:
        self._check(followed)
        followed.run.close()
        index_run(self.repo, followed.run_hash)
        followed.run = None
        self._save_cursor(followed)

    def poll(self, final: bool = False) -> None:
        """One pass: new run folders, new lines; runs idle too long closed (reopened when they grow)."""
        for run_dir in self.wanted:
            self._followed(run_dir, math.inf)
        for folder, idle_close_s in self.folders.items():
            try:
                found = fetch_named(folder, CONFIG_FILE)
            except OSError:
                found = []
            for config in found:
                self._followed(config.parent, idle_close_s)
        now = time.monotonic()
        for followed in list(self.runs.values()):
            self._copy(followed, final)
            if followed.run is not None:
                self._check(followed)
                if now - followed.active_at > followed.idle_close_s:
                    self._close(followed)

    def finish(self) -> None:
        """The last lines, every run closed and indexed, and Aim's databases closed now: a failure to
        write them surfaces here, not in Aim's exit handler (where it would hang the process)."""
        from aim.ext.cleanup import AutoClean
        self.poll(final=True)
        for followed in self.runs.values():
            if followed.run is not None:
                self._close(followed)
        AutoClean._cleanup()


def _read_commands(commands: queue.Queue) -> None:
    for line in sys.stdin:
        try:
            commands.put(json.loads(line))
        except ValueError:
            continue
    commands.put({"finish": True})          # the driver is gone: finish on our own


def serve(repo: str, poll_s: float) -> None:
    # Stop signals are the driver's to act on: `ray job stop` and schedulers signal every process of the
    # job, this one included, which would die without its last copy. It ends when the driver closes its
    # stdin (after the last copy) or kills it.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w")     # the driver reads our messages here; anything printed goes to stderr
    os.dup2(2, 1)

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_read_commands, args=(commands,), daemon=True).start()
    try:
        writer = AimWriter(repo)
        while True:
            try:
                command = commands.get(timeout=poll_s)
            except queue.Empty:
                command = {}
            if "follow" in command:
                writer.follow(Path(command["follow"]))
            if "follow_folder" in command:
                writer.follow_folder(Path(command["follow_folder"]), float(command["idle_close_s"]))
            if "finish" in command:
                writer.finish()
                send({"finished": True})
                return
            writer.poll()
    except Exception as e:
        with contextlib.suppress(OSError):  # the driver may be gone
            send({"error": f"{type(e).__name__}: {e}"})
        os._exit(0)                         # not through Aim's exit handler: on a broken repo it never returns


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
