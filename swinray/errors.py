"""Errors a user can fix: the command line prints one line and ``ok: false``, never a traceback.

Anything else is a bug, or a fault of the machine, and keeps its traceback; except a place a
command cannot write to, which is named as such (``StorageError``), never as bad data.
"""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with the user's settings, data or environment; the message names what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid; the message names the field and what is valid."""


class RunChanged(ConfigError):
    """A run folder already holds a run of the name asked for, started with another config."""


class EncoderChanged(RunChanged):
    """A started run's ``seg.pretrained`` file now holds other weights than the run started from."""


class DatasetError(UserError, ValueError):
    """A dataset file or folder is unusable; the message names the file and the problem."""


def short_repr(value: object) -> str:
    """A value as an error message quotes it: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_REMEDIES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
             errno.EROFS: "remount it read-write", errno.ENOTDIR: "move the file that stands where a folder should be",
             errno.EEXIST: "move the file that stands where a folder should be"}


class StorageError(UserError):
    """An output location cannot be written: no permission, a read-only or full filesystem, a file where
    a folder should be. A fault of the place, never of the data, so no case is refused for it, and a
    rerun once it is fixed resumes. ``key`` is the setting that chose the place (``data.cache_dir``)."""

    def __init__(self, path, code: int, key: str = ""):
        self.path, self.code, self.key = str(path), code, key
        remedy = _REMEDIES.get(code, "make it writable")
        super().__init__(f"cannot write to {path}: {os.strerror(code).lower()} (errno {code}); {remedy}, or "
                         f"choose another {key or 'folder'}")

    def __reduce__(self):               # crosses from Ray workers to the driver whole
        return type(self), (self.path, self.code, self.key)
