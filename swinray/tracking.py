"""Metrics for people and scripts: Aim when it works, a JSON-lines log always.

Only world rank 0 tracks; every other rank gets a tracker that does nothing. Aim being
unreachable, locked or broken never stops training: the first failure is reported once as a
warning, Aim is switched off for the rest of the run, and the JSON-lines log keeps everything.

    aim up --repo outputs/.aim --host 127.0.0.1
"""
from __future__ import annotations

import base64
import json
import math
import sys
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from swinray.storage import SyncedLog

AIM_UI = "http://127.0.0.1:43800"    # `aim up` as cluster/*.yaml runs it on the head, reached by `ray attach -p 43800`
UPLOAD_EVERY_S = 10.0                 # a metrics log in object storage is re-uploaded this often (and at the end)


def aim_ui_command(repo: str) -> str:
    """How to open the Aim UI on ``repo``, as a command that works from any shell: ``aim up`` (the
    environment's own ``aim``, by its full path) for a repo on disk; for a tracking server
    (``aim://``) the UI that ``cluster/*.yaml`` runs beside it on the head, which ``aim up`` here
    cannot open."""
    if repo.startswith("aim://"):
        return ("ray attach cluster/gpu.yaml -p 43800  # the head's Aim UI on its tracking server "
                f"{repo}, then open {AIM_UI}")
    aim = Path(sys.executable).with_name("aim")
    return f"{aim if aim.exists() else 'aim'} up --repo {repo} --host 127.0.0.1"


def aim_explorer_url(query: str, page: str = "metrics", base: str = AIM_UI) -> str:
    """A link that opens ``aim up``'s explorer ``page`` (runs, metrics, params) with ``query`` applied,
    e.g. ``metric.name == "val_dice" and run.experiment == "sweep-hippocampus"``.

    Aim 3.29 keeps the explorer's state in ``?select=``: "O-" + base64 of the JSON state escaped as
    JavaScript's encodeURI does."""
    state = json.dumps({"options": [], "query": "", "advancedMode": True, "advancedQuery": query},
                       separators=(",", ":"))
    escaped = urllib.parse.quote(state, safe=";,/?:@&=+$-_.!~*'()#")
    return f"{base.rstrip('/')}/{page}?select=O-{base64.b64encode(escaped.encode()).decode()}"


class Tracker:
    """Append metrics to ``jsonl_path`` and, best effort, to an Aim run in ``aim_repo``."""

    def __init__(self, jsonl_path: str | Path, aim_repo: str | None, experiment: str,
                 params: dict | None = None, run_hash: str | None = None, name: str = "",
                 resumed_at: int | None = None):
        """``resumed_at``: the step a training run (re)starts from, 0 for a new one; lines of later
        steps, logged before a crash or a kill and about to be redone, are dropped, so the log holds
        each step once."""
        self.jsonl = SyncedLog(jsonl_path, UPLOAD_EVERY_S)
        if resumed_at is not None:
            self.jsonl.keep(lambda line: json.loads(line).get("step", 0) <= resumed_at)
        self.aim_run = None
        self.aim_error: str | None = None
        if aim_repo:
            self._guard(lambda: self._open_aim(aim_repo, experiment, params, run_hash, name))

    def _open_aim(self, repo: str, experiment: str, params: dict | None, run_hash: str | None, name: str):
        from aim import Repo, Run
        if "://" not in repo and not Repo.exists(repo):
            Repo.from_path(repo, init=True)
        self.aim_run = Run(run_hash=run_hash, repo=repo, experiment=experiment)
        if name:                    # Aim lists runs by name: the run (or sweep trial) name, not a hash
            self.aim_run.name = name
        if params:
            self.aim_run["hparams"] = params

    def _guard(self, action) -> None:
        try:
            action()
        except Exception as e:  # Aim may fail in many ways; training must not
            self.aim_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"Aim tracking is off for the rest of this run ({self.aim_error}); "
                          f"metrics still go to {self.jsonl.path}", RuntimeWarning, stacklevel=3)
            self.aim_run = None

    @property
    def run_hash(self) -> str | None:
        return self.aim_run.hash if self.aim_run is not None else None

    def log(self, metrics: dict[str, Any], step: int, context: dict | None = None) -> None:
        """One JSON line per call, stamped with wall time (benchmarks time whole steps from it)."""
        self.jsonl.append(json.dumps({"step": step, "time": time.time(), **metrics}))
        if self.aim_run is not None:
            def track():
                for name, value in metrics.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        self.aim_run.track(value, name=name, step=step, context=context or {})
            self._guard(track)

    def log_image(self, name: str, image, step: int, caption: str = "") -> None:
        """An (H, W, 3) uint8 picture to Aim (the JSON-lines log keeps numbers only)."""
        if self.aim_run is not None:
            def track():
                from aim import Image
                self.aim_run.track(Image(image, caption=caption), name=name, step=step)
            self._guard(track)

    def checkpointed(self) -> None:
        """At a checkpoint: the log in object storage reaches at least as far as the checkpoint, so a
        run resumed from it on another node loses no line."""
        self.jsonl.sync()

    def close(self) -> None:
        self.jsonl.sync()
        if self.aim_run is not None:
            run_hash, repo = self.aim_run.hash, self.aim_run.repo
            self._guard(self.aim_run.close)
            index_run(repo, run_hash)


def index_run(repo, run_hash: str) -> bool:
    """Make a closed run visible to Aim's query SDK now; True if it was indexed.

    Aim 3.29 answers ``Repo.get_run``, ``iter_runs`` and ``query_metrics`` from an index that only
    ``aim up`` and ``aim storage reindex`` fill. While ``aim up`` runs it holds the index (and
    indexes the run itself), so a failure here is expected and silent."""
    try:
        from aim.sdk.index_manager import RepoIndexManager
        if repo.is_remote_repo:    # the tracking server indexes its own runs
            return False
        RepoIndexManager.get_index_manager(repo).index(run_hash)
        return True
    except Exception:
        return False


def close_abandoned_run(repo: str, run_hash: str) -> bool:
    """Close the Aim run of a killed process (a trial ASHA stopped); True once the run is closed.

    Aim would show it active, and unindexed, for ever. A run that ended normally is left alone.
    One still held by a live process, or by a process on another machine, cannot be taken over
    (False). Runs on a tracking server (aim://) are the server's business (True)."""
    try:
        from aim import Run
        if "://" in repo or Run(run_hash, repo=repo, read_only=True).end_time is not None:
            return True
        run = Run(run_hash=run_hash, repo=repo, system_tracking_interval=None,
                  log_system_params=False, capture_terminal_logs=False)   # takes over a dead writer's lock
        run.close()
        index_run(run.repo, run_hash)
        return True
    except Exception:
        return False


class NullTracker:
    """What ranks other than 0 get: tracking calls that do nothing."""

    run_hash = None
    aim_error = None

    def checkpointed(self) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int, context: dict | None = None) -> None:
        pass

    def log_image(self, name: str, image, step: int, caption: str = "") -> None:
        pass

    def close(self) -> None:
        pass
