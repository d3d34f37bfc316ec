"""What a run records, in its own folder: the metrics and pictures that Aim shows.

Only world rank 0 of a trainer records; every other rank gets a tracker that does nothing. It
writes to run storage only, never to Aim: ``metrics.jsonl`` (a JSON line per step) and
``images.jsonl`` (a line per picture, naming its PNG under ``images/``), uploaded with the run's
other files when run storage is an object store. The driver copies both into a local Aim repo
while the run goes on (``swinray.aim_mirror``), so no Aim server has to be reachable from workers.

    aim up --repo outputs --host 127.0.0.1
"""
from __future__ import annotations

import base64
import json
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from swinray.storage import SyncedLog, atomic_write

AIM_UI = "http://127.0.0.1:43800"    # `aim up` as cluster/*.yaml runs it on the head, reached by `ray attach -p 43800`
UPLOAD_EVERY_S = 10.0                 # a log in object storage is re-uploaded this often (and at checkpoints)
METRICS_FILE = "metrics.jsonl"
IMAGES_FILE = "images.jsonl"
IMAGES_DIR = "images"
IMAGE_NAME = re.compile(r"[A-Za-z0-9_.-]+")   # a picture's name is a folder name under images/


def aim_ui_command(repo: str) -> str:
    """How to open the Aim UI on ``repo``, as a command that works from any shell: the
    environment's own ``aim`` by its full path."""
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
    """Rank 0's record of a run in ``run_dir``: metrics to ``metrics.jsonl``, pictures to PNG files
    listed in ``images.jsonl``."""

    def __init__(self, run_dir: str | Path, resumed_at: int | None = None):
        """``resumed_at``: the step a training run (re)starts from, 0 for a new one; lines of later
        steps, logged before a crash or a kill and about to be redone, are dropped, so each log holds
        each step once."""
        self.run_dir = Path(run_dir)
        self.jsonl = SyncedLog(self.run_dir / METRICS_FILE, UPLOAD_EVERY_S)
        self.images = SyncedLog(self.run_dir / IMAGES_FILE, UPLOAD_EVERY_S)
        if resumed_at is not None:
            for log in (self.jsonl, self.images):
                log.keep(lambda line: json.loads(line).get("step", 0) <= resumed_at)

    def log(self, metrics: dict[str, Any], step: int, context: dict | None = None) -> None:
        """One JSON line per call, stamped with wall time (benchmarks time whole steps from it);
        ``context`` (Aim's, e.g. ``{"subset": "val"}``) rides along when given."""
        extra = {"context": context} if context else {}
        self.jsonl.append(json.dumps({"step": step, "time": time.time(), **metrics, **extra}))

    def log_image(self, name: str, image, step: int, caption: str = "") -> None:
        """An (H, W, 3) uint8 picture: ``images/<name>/<step>.png``, then its line in ``images.jsonl``
        (so a reader that sees the line finds the file)."""
        from PIL import Image
        if not IMAGE_NAME.fullmatch(name):
            raise ValueError(f"picture name {name!r}: letters, digits, '_', '.' and '-' only")
        file = f"{IMAGES_DIR}/{name}/{step:08d}.png"
        atomic_write(self.run_dir / file, lambda f: Image.fromarray(image).save(f, format="PNG"))
        self.images.append(json.dumps({"step": step, "time": time.time(), "name": name, "file": file,
                                       "caption": caption}))

    def checkpointed(self) -> None:
        """At a checkpoint: the logs in object storage reach at least as far as the checkpoint, so a
        run resumed from it on another node loses no line."""
        self.jsonl.sync()
        self.images.sync()

    def close(self) -> None:
        self.checkpointed()


class NullTracker:
    """What ranks other than 0 get: tracking calls that do nothing."""

    def checkpointed(self) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int, context: dict | None = None) -> None:
        pass

    def log_image(self, name: str, image, step: int, caption: str = "") -> None:
        pass

    def close(self) -> None:
        pass
