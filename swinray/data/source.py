"""Which dataset a command reads: the one the user named, or the built-in phantom."""
from __future__ import annotations

from pathlib import Path

from swinray.config import DataConfig


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
