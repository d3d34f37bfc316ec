"""Where a command writes: a place that refuses (permission, a read-only or full filesystem, a file
where a folder should be) is named as a StorageError, with the setting that chose it, and never
mistaken for bad data. ``check_writable`` tries a place before any work; ``writing_to`` names a
fault that appears mid-run (a disk that fills).

    with writing_to(cache, "data.cache_dir"):
        write_case(...)     # OSError(ENOSPC) -> "cannot write to <cache>: no space left on device (errno 28); ..."
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from swinray.errors import StorageError

# What a place a command writes to can refuse: permission, a read-only or full filesystem, a
# file where a folder should be. Anything else an OSError says while writing is not the place's fault.
STORAGE_FAULTS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                            errno.EEXIST, errno.EISDIR, errno.EFBIG})
# What an error naming no file may still be: a full disk's or a read-only filesystem's write says no
# name, while an unnamed EACCES or EPERM may come from anything (signalling a process, a socket).
UNNAMED_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def storage_fault(error: BaseException, location: str | Path, key: str = "") -> StorageError | None:
    """The StorageError that ``error``, raised while writing to ``location``, stands for, naming
    ``location`` and the setting ``key`` that chose it; None when it is no fault of that place. An
    OSError counts when its errno is a fault and it names a file in ``location`` or one of its
    parents (the folders being made), or names none and is a full or read-only disk's (``UNNAMED_FAULTS``)."""
    if isinstance(error, StorageError):
        if error.key or not _related(error.path, location):
            return error
        return StorageError(location, error.code, key)
    if not isinstance(error, OSError) or error.errno not in STORAGE_FAULTS:
        return None
    if error.filename is None:
        return StorageError(location, error.errno, key) if error.errno in UNNAMED_FAULTS else None
    if not _related(error.filename, location):
        return None
    return StorageError(location, error.errno, key)


def _related(path: str | Path, location: str | Path) -> bool:
    a, b = Path(os.path.abspath(path)), Path(os.path.abspath(location))
    return a == b or b in a.parents or a in b.parents


@contextlib.contextmanager
def writing_to(location: str | Path, key: str = "") -> Iterator[None]:
    """Raise a fault of ``location`` in the block (``storage_fault``) as the StorageError naming it."""
    try:
        yield
    except (StorageError, OSError) as e:
        fault = storage_fault(e, location, key)
        if fault is None or fault is e:
            raise
        raise fault from None


def check_writable(folder: str | Path, key: str) -> Path:
    """Make ``folder`` and write, sync and delete a small file in it, before any work: a refused,
    read-only or full place stops the command here with one message, not every case later."""
    folder = Path(folder)
    probe = folder / f".write-probe.{os.getpid()}"
    with writing_to(folder, key):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.unlink(missing_ok=True)   # a crashed probe's, or a link planted under this name
            with open(probe, "xb") as f:    # never through a link planted under this name
                f.write(bytes(4096))        # a block: a full disk may still take an empty file
                f.flush()
                os.fsync(f.fileno())
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
    return folder
