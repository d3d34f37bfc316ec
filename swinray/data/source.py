"""Which dataset a command reads: the one the user named, or the built-in phantom."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from swinray.config import ConfigError, DataConfig
from swinray.storage import fetch, is_uri, local_path, remote_exists, shown, upload


def under_storage(data: DataConfig, storage: str) -> DataConfig:
    """``data`` with its unset folders (cache, phantom) under ``run.storage``. On a cluster that is
    the shared filesystem every node mounts, so every node reads the cases any node wrote."""
    root = local_path(storage)          # an object store's node-local mirror (swinray.storage)
    return replace(data, cache_dir=data.cache_dir or str(root / "cache"),
                   phantom_dir=data.phantom_dir or str(root / "phantom"))


def resolve_source(data: DataConfig, log=print) -> Path:
    """``data.source`` if set; otherwise the phantom in ``data.phantom_dir`` (see ``under_storage``),
    written if missing."""
    if data.source:
        return Path(data.source)
    if not data.phantom_dir:
        raise ConfigError("data.phantom_dir is unset: place it with under_storage(data, run.storage) first")
    phantom = local_path(data.phantom_dir)
    if not (phantom / "dataset.json").exists() and remote_exists(phantom / "dataset.json"):
        fetch(phantom, refresh=True)    # written by another node to object storage: all of it (small)
    if not (phantom / "dataset.json").exists():
        from swinray.data.phantom import write_phantom_dataset
        log(f"no --data given: writing the built-in CT phantom ({data.num_phantom_cases} cases) to {shown(phantom)}")
        write_phantom_dataset(phantom, data.num_phantom_cases)
        upload(phantom)
    return phantom


def load_source(data: DataConfig, log=print):
    """The dataset to preprocess: a pretraining corpus (``data.unlabelled``), or ``resolve_source``'s."""
    from swinray.data.datasets import load_corpus, load_dataset
    uris = [s for s in (data.source, *data.unlabelled) if is_uri(s)]
    if uris:
        raise ConfigError(f"{uris[0]}: datasets are read from a path (memory maps and NIfTI readers need "
                          "files); download it, or mount the bucket, and pass that path. Outputs, not "
                          "inputs, may go to object storage (run.storage)")
    if data.unlabelled:
        if data.source:
            raise ConfigError(f"data.source={data.source} and data.unlabelled={list(data.unlabelled)}: give one "
                              "dataset (--data) or unlabelled collections (--unlabelled), not both")
        return load_corpus(data.unlabelled, data.task)
    return load_dataset(resolve_source(data, log), data.task)
