"""Reading an append-only log as it grows: rank 0's ``metrics.jsonl`` and ``images.jsonl``, followed
by the driver for its progress bar and for Aim.

The log may be written on another node: with object storage the lines are read from the object,
which rank 0 uploads every few seconds and at checkpoints (a copy on this node may be stale). A
resumed run rewrites its log without the lines of the steps it redoes; the tail notices (the last
line it read is no longer where it was) and reads the log again from its start.

    tail = LogTail(run_dir / "metrics.jsonl")
    lines, from_start = tail.read()
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from swinray.storage import read_remote_bytes, remote_of

REMOTE_POLL_S = 5.0     # an object is read at most this often (rank 0 uploads every 10 s and at checkpoints)


class LogTail:
    def __init__(self, path: str | Path, offset: int = 0, last: bytes = b"", remote_poll_s: float = REMOTE_POLL_S):
        """``offset``, ``last``: where an earlier reader stopped (``state()``), to go on from there."""
        self.path, self.offset, self.last = Path(path), offset, last
        self.mirrored = remote_of(self.path) is not None
        self.remote_poll_s, self.remote_read_at = remote_poll_s, -math.inf

    def state(self) -> dict:
        return {"offset": self.offset, "last": self.last.decode(errors="replace")}

    def _source(self, final: bool) -> str:
        """Where to read: in object storage the object, at most every ``remote_poll_s`` unless ``final``
        (this node's copy is never trusted: it may be a download of the log as it was before a resumed
        run dropped the steps it redoes); else "here" when the file differs from what was read (it
        grew, or a rewrite shortened it), and always when ``final`` (opening the file, not its cached
        size, sees a shared filesystem's last writes); else "" (nothing new)."""
        if self.mirrored:
            if final or time.monotonic() - self.remote_read_at >= self.remote_poll_s:
                self.remote_read_at = time.monotonic()
                return "object"
            return ""
        size = self.path.stat().st_size if self.path.exists() else None
        return "here" if size is not None and (final or size != self.offset) else ""

    def _bytes_from(self, source: str, start: int) -> bytes | None:
        if source == "object":
            return read_remote_bytes(self.path, start)    # b"" when the object ends before start
        with self.path.open("rb") as f:
            f.seek(start)
            return f.read()

    def read(self, final: bool = False) -> tuple[list[bytes], bool]:
        """(the complete lines added since the last read, whether they start again from the log's
        beginning because it was rewritten). ``final``: read the object now, whatever the interval."""
        source = self._source(final)
        chunk = self._bytes_from(source, self.offset - len(self.last)) if source else None
        if chunk is None:
            return [], False
        from_start = not chunk.startswith(self.last)   # the last line read is gone: rewritten
        if from_start:
            self.offset, self.last = 0, b""
            chunk = self._bytes_from(source, 0) or b""
        else:
            chunk = chunk[len(self.last):]
        complete = chunk[:chunk.rfind(b"\n") + 1]      # a line being written waits for the next read
        lines = complete.splitlines(keepends=True)
        if lines:
            self.offset += len(complete)
            self.last = lines[-1]
        return [line.rstrip(b"\n") for line in lines if line.strip()], from_start
