"""Which dataset a command reads: the one the user named, or the built-in phantom."""
from __future__ import annotations

from pathlib import Path

from swinray.config import ConfigError, DataConfig


def resolve_source(data: DataConfig, log=print) -> Path:
    """``data.source`` if set; otherwise the phantom in ``data.phantom_dir``, written if missing."""
    if data.source:
        return Path(data.source)
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
