"""Where outputs go: a local or shared path, or an object store (``s3://bucket/prefix``, ``gs://...``).

With a URI, Ray Train and Tune write checkpoints and experiment state straight to it, and our own
files (run records, metrics logs, exported weights, the preprocessing cache, sweep tables) are
written to a node-local mirror of it and uploaded whole once written: memory maps need local
files, and a reader never sees half an object. Every node's mirror has the same layout
(``<mirror>/<scheme>/<bucket>/<key>``), so a path names the same object on any node, and a node
that lacks a file downloads it on first use (``fetch``).

    local_path("s3://lab/ssl")      -> ~/.cache/swinray/storage/s3/lab/ssl
    remote_of(local_path("s3://lab/ssl") / "run/encoder.pt")  -> "s3://lab/ssl/run/encoder.pt"
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterator

from swinray.errors import ConfigError
from swinray.writable import writing_to

MIRROR_ENV = "SWINRAY_STORAGE_MIRROR"   # the node-local mirror of object storage (same on every node)
URI_SCHEMES = ("s3", "gs")              # what pyarrow.fs (and so Ray Train and Tune) can write to


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def check_storage(location: str, key: str) -> None:
    """A local path, or a URI of an object store we can write to; anything else is a ConfigError."""
    scheme = str(location).split("://", 1)[0] if is_uri(location) else ""
    if scheme and (scheme not in URI_SCHEMES or not str(location).split("://", 1)[1].strip("/")
                   or "?" in str(location)):       # options go in the environment (AWS_ENDPOINT_URL)
        raise ConfigError(f"{key}={location!r}: storage is a path, or an object-store URI "
                          f"({', '.join(s + '://BUCKET/PREFIX' for s in URI_SCHEMES)})")


def mirror_root() -> Path:
    return Path(os.environ.get(MIRROR_ENV) or Path.home() / ".cache" / "swinray" / "storage").resolve()


def local_path(location: str | Path) -> Path:
    """The absolute local path of ``location``: itself, or its mirror for a URI."""
    if not is_uri(location):
        return Path(location).resolve()
    scheme, rest = str(location).split("://", 1)
    return mirror_root() / scheme / rest.strip("/")


def remote_of(path: str | Path) -> str | None:
    """The object-store URI that a mirror path stands for, None for any other path."""
    try:
        parts = Path(path).resolve().relative_to(mirror_root()).parts
    except ValueError:
        return None
    return f"{parts[0]}://{'/'.join(parts[1:])}" if len(parts) > 1 else None


def shown(path: str | Path) -> str:
    """How to name a path to people and scripts: its URI when it is mirrored object storage."""
    return remote_of(path) or str(path)


def ray_storage_path(location: str | Path) -> str:
    """``storage_path`` for Ray Train and Tune: the URI for object storage (or its mirror), else the path."""
    return str(location) if is_uri(location) else remote_of(location) or str(Path(location).resolve())


@functools.cache
def _bucket_filesystem(scheme: str, bucket: str):
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def _filesystem(uri: str):
    """(pyarrow filesystem, its path ``bucket/key``): one client per bucket (its region looked up once)."""
    scheme, rest = uri.split("://", 1)
    rest = rest.strip("/")
    return _bucket_filesystem(scheme, rest.split("/", 1)[0]), rest


def upload(path: str | Path) -> None:
    """Copy a finished mirror file or folder to its object; nothing for other paths. A failed copy
    leaves no object behind (pyarrow completes an upload even when the copy into it failed)."""
    uri = remote_of(path)
    if uri is None:
        return
    import pyarrow.fs
    fs, key = _filesystem(uri)
    if Path(path).is_dir():
        pyarrow.fs.copy_files(str(path), key, destination_filesystem=fs)
        return
    try:   # compression=None: pyarrow would otherwise gzip whatever it writes to a name ending .gz
        with open(path, "rb") as source, fs.open_output_stream(key, compression=None) as target:
            shutil.copyfileobj(source, target, length=8 << 20)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(key)
        raise


def atomic_write(path: str | Path, write: Callable) -> Path:
    """Write a file whole: ``write(f)`` into a temporary name, renamed into place (a reader or a crash
    never sees half a file), then, in object storage, uploaded. A refused or full place is a StorageError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing_to(path.parent):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)         # a crashed writer's, or a link planted under this name
            with open(tmp, "xb") as f:      # never through a link planted under this name
                write(f)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):  # a folder that refused the file refuses this too
                tmp.unlink(missing_ok=True)
    upload(path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data, indent: int = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


@contextlib.contextmanager
def publishing(folder: str | Path) -> Iterator[Path]:
    """A folder written by the block (a generated dataset), uploaded whole when the block ends."""
    folder = Path(folder)
    yield folder
    upload(folder)


def remote_exists(path: str | Path) -> bool:
    """Whether the object behind a URI or a mirror path exists (False for other paths)."""
    return remote_size(path) is not None


def remote_size(location: str | Path) -> int | None:
    """The size of the object behind a URI or a mirror path; None if there is none."""
    uri = str(location) if is_uri(location) else remote_of(location)
    if uri is None:
        return None
    import pyarrow.fs
    fs, key = _filesystem(uri)
    info = fs.get_file_info(key)
    return None if info.type == pyarrow.fs.FileType.NotFound else (info.size or 0)


def exists(location: str | Path) -> bool:
    """Whether a file is here or, for a URI or a mirror path, in its object store."""
    return (not is_uri(location) and Path(location).exists()) or remote_exists(location)


def fetch(path: str | Path, refresh: bool = False) -> bool:
    """Make a mirror file or folder present here, downloading it if missing (or always with
    ``refresh``); returns whether it exists now. A file arrives under a temporary name, then is
    renamed; a folder's files are copied in place."""
    path = Path(path)
    uri = remote_of(path)
    if uri is None or (path.exists() and not refresh):
        return path.exists()
    import pyarrow.fs
    fs, key = _filesystem(uri)
    info = fs.get_file_info(key)
    if info.type == pyarrow.fs.FileType.NotFound:
        return path.exists()
    if info.type == pyarrow.fs.FileType.Directory:
        path.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(key, str(path), source_filesystem=fs)
    else:
        _download(fs, key, path)
    return True


def _download(fs, key: str, destination: Path) -> None:
    """One object to a local file, under a temporary name and then renamed: never half a file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
    try:   # compression=None: pyarrow would otherwise gunzip whatever it reads from a name ending .gz
        with fs.open_input_stream(key, compression=None) as source, open(tmp, "wb") as target:
            shutil.copyfileobj(source, target, length=8 << 20)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_newer(path: str | Path) -> bool:
    """``fetch``, replacing a local copy shorter than its object (a log that grew on another node)."""
    path = Path(path)
    size = remote_size(path)
    return fetch(path, refresh=size is not None and (not path.exists() or path.stat().st_size < size))


def local_file(location: str | Path) -> Path:
    """The local file for a path or an object-store URI (downloaded to this node's mirror if need be)."""
    path = local_path(location)
    fetch(path)
    return path


def file_sha256(location: str | Path) -> str:
    """The sha256 of a file's content, read in blocks (an encoder of the paper's size is some 250 MB)."""
    digest = hashlib.sha256()
    with open(local_file(location), "rb") as f:
        for block in iter(functools.partial(f.read, 8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_remote_bytes(path: str | Path, offset: int = 0) -> bytes | None:
    """The object behind a mirror path from ``offset`` on, without touching the local copy (None if
    absent or not mirrored; empty if it is no longer than ``offset``)."""
    uri = remote_of(path)
    if uri is None:
        return None
    fs, key = _filesystem(uri)
    try:
        with fs.open_input_file(key) as source:
            if source.size() <= offset:
                return b""
            source.seek(offset)
            return source.read()
    except OSError:                     # FileNotFoundError included: not uploaded yet
        return None


def copy_to_local(location: str, destination: Path) -> Path:
    """Copy a file named by a path or URI (a Ray checkpoint's, say) to ``destination``; then upload it."""
    if is_uri(location):
        _download(*_filesystem(location), destination)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(location, destination)
    upload(destination)
    return destination


def fetch_named(folder: str | Path, name: str) -> list[Path]:
    """``<folder>/*/<name>``, those only in its object store downloaded first (a sweep's per-trial
    records, written by workers on any node)."""
    folder = Path(folder)
    uri = remote_of(folder)
    if uri is not None:
        import pyarrow.fs
        fs, key = _filesystem(uri)
        if fs.get_file_info(key).type == pyarrow.fs.FileType.Directory:
            for info in fs.get_file_info(pyarrow.fs.FileSelector(key)):
                if info.type == pyarrow.fs.FileType.Directory:
                    fetch(folder / info.base_name / name)
    return sorted(folder.glob(f"*/{name}"))


def checkpoint_location(checkpoint_path: str, storage_path: str) -> str:
    """A Ray checkpoint's ``path`` as a path or URI: Ray gives it within its filesystem, so for object
    storage (``storage_path`` a URI) without the scheme."""
    if is_uri(storage_path) and not is_uri(checkpoint_path):
        return f"{storage_path.split('://', 1)[0]}://{checkpoint_path.lstrip('/')}"
    return checkpoint_path


class SyncedLog:
    """An append-only text log: written here line by line and, in object storage, uploaded whole at
    least every ``every_s`` seconds and at every ``sync()``. A run resumed on another node first
    fetches the lines written before. An upload failure warns once; appending goes on."""

    def __init__(self, path: str | Path, every_s: float = 10.0):
        self.path, self.every_s = Path(path), every_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mirrored = remote_of(self.path) is not None
        self.synced_at = time.monotonic() if self.mirrored and fetch_newer(self.path) else -math.inf
        self.error: str | None = None

    def keep(self, wanted: Callable[[str], bool]) -> int:
        """Rewrite the log with only the lines ``wanted`` keeps (whole, then uploaded); how many it dropped.
        A last line without its newline was cut short (a full disk, a crash) and is dropped unread."""
        if not self.path.exists():
            return 0
        text = self.path.read_text()
        lines = text.splitlines()
        whole = lines if text.endswith("\n") else lines[:-1]
        kept = [line for line in whole if line.strip() and wanted(line)]
        if len(kept) != len(lines):
            write_text(self.path, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)

    def append(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line.rstrip("\n") + "\n")
        if self.mirrored and time.monotonic() - self.synced_at >= self.every_s:
            self.sync()

    def sync(self) -> None:
        if not self.mirrored:
            return
        self.synced_at = time.monotonic()
        try:
            upload(self.path)
        except Exception as e:
            if self.error is None:
                warnings.warn(f"could not upload {self.path} to {remote_of(self.path)} ({type(e).__name__}: {e}); "
                              "it stays on this node", RuntimeWarning, stacklevel=2)
            self.error = f"{type(e).__name__}: {e}"
