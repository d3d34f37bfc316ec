"""Which dataset a command reads: the one the user named, or the built-in phantom."""
from __future__ import annotations

from pathlib import Path

from swinray.config import DataConfig
from swinray.errors import ConfigError
from swinray.storage import fetch, is_uri, local_path, publishing, remote_exists, shown


def resolve_source(data: DataConfig, log=print) -> Path:
    """``data.source`` if set; otherwise the phantom in ``data.phantom_dir`` (placed by
    ``swinray.resolve``), written if missing."""
    if data.source:
        return Path(data.source)
    if not data.phantom_dir:
        raise ConfigError("data.phantom_dir is unset: resolve the config first (swinray.resolve.place_folders)")
    phantom = local_path(data.phantom_dir)
    if not (phantom / "dataset.json").exists() and remote_exists(phantom / "dataset.json"):
        fetch(phantom, refresh=True)    # written by another node to object storage: all of it (small)
    if not (phantom / "dataset.json").exists():
        from swinray.data.phantom import write_phantom_dataset
        log(f"no --data given: writing the built-in CT phantom ({data.num_phantom_cases} cases) to {shown(phantom)}")
        with publishing(phantom):
            write_phantom_dataset(phantom, data.num_phantom_cases)
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
        return load_corpus(data.unlabelled, data.task, data.limits, log)
    return load_dataset(resolve_source(data, log), data.task, data.limits, log)
