"""Which dataset a command reads: the one the user named, or the built-in phantom."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from swinray.config import ConfigError, DataConfig


def under_storage(data: DataConfig, storage: str) -> DataConfig:
    """``data`` with its unset folders (cache, phantom) under ``run.storage``. On a cluster that is
    the shared filesystem every node mounts, so every node reads the cases any node wrote."""
    return replace(data, cache_dir=data.cache_dir or str(Path(storage) / "cache"),
                   phantom_dir=data.phantom_dir or str(Path(storage) / "phantom"))


def resolve_source(data: DataConfig, log=print) -> Path:
    """``data.source`` if set; otherwise the phantom in ``data.phantom_dir`` (see ``under_storage``),
    written if missing."""
    if data.source:
        return Path(data.source)
    if not data.phantom_dir:
        raise ConfigError("data.phantom_dir is unset: place it with under_storage(data, run.storage) first")
    phantom = Path(data.phantom_dir)
    if not (phantom / "dataset.json").exists():
        from swinray.data.phantom import write_phantom_dataset
        log(f"no --data given: writing the built-in CT phantom ({data.num_phantom_cases} cases) to {phantom}")
        write_phantom_dataset(phantom, data.num_phantom_cases)
    return phantom


def load_source(data: DataConfig, log=print):
    """The dataset to preprocess: a pretraining corpus (``data.unlabelled``), or ``resolve_source``'s."""
    from swinray.data.datasets import load_corpus, load_dataset
    if data.unlabelled:
        if data.source:
            raise ConfigError(f"data.source={data.source} and data.unlabelled={list(data.unlabelled)}: give one "
                              "dataset (--data) or unlabelled collections (--unlabelled), not both")
        return load_corpus(data.unlabelled, data.task)
    return load_dataset(resolve_source(data, log), data.task)
