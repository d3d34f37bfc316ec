"""Which dataset a command reads: the one the user named, or the built-in phantom."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from swinray.config import DataConfig
from swinray.errors import ConfigError
from swinray.storage import fetch, is_uri, local_path, publishing, remote_exists, shown
from swinray.writable import check_writable, writing_to

PHANTOM_KEY = "data.phantom_dir"      # named when the phantom cannot be written there


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
        with writing_to(check_writable(phantom, PHANTOM_KEY), PHANTOM_KEY), publishing(phantom):
            write_phantom_dataset(phantom, data.num_phantom_cases, shape=data.phantom_shape)
    else:
        _say_if_another_shape(phantom, data.phantom_shape, log)
    return phantom


def _say_if_another_shape(phantom: Path, asked: tuple[int, int, int], log) -> None:
    """A phantom already written keeps its shape: say so when ``data.phantom_shape`` asks for another."""
    import nibabel as nib
    first = next(iter(sorted((phantom / "imagesTr").glob("*.nii.gz"))), None)
    if first is None:
        return
    try:
        shape = tuple(nib.load(first).shape[:3])
    except Exception:     # noqa: BLE001 - not readable: loading the dataset names the file and the problem
        return
    if shape != tuple(asked):
        log(f"the phantom in {shown(phantom)} has {shape[0]} x {shape[1]} x {shape[2]} voxels per case: "
            f"data.phantom_shape={','.join(map(str, asked))} applies only to a phantom not yet written "
            "(delete that folder to write it anew)")


def load_source(data: DataConfig, log=print):
    """The dataset to preprocess: a pretraining corpus (``data.unlabelled``), or ``resolve_source``'s."""
    from swinray.data.corpus import load_corpus
    from swinray.data.datasets import load_dataset
    uris = [s for s in (data.source, *data.unlabelled) if is_uri(s)]
    if uris:
        raise ConfigError(f"{uris[0]}: datasets are read from a path (memory maps and NIfTI readers need "
                          "files); download it, or mount the bucket, and pass that path. Outputs, not "
                          "inputs, may go to object storage (run.storage)")
    if data.unlabelled:
        if data.source:
            raise ConfigError(f"data.source={data.source} and data.unlabelled={list(data.unlabelled)}: give one "
                              "dataset (--data) or unlabelled collections (--unlabelled), not both")
        corpus = load_corpus(data.unlabelled, data.task, data.limits, log)
        return without_cases(corpus, excluded_cases(data.exclude_cases), log) if data.exclude_cases else corpus
    if data.exclude_cases:
        raise ConfigError(f"data.exclude_cases={data.exclude_cases}: leaves cases out of a pretraining corpus "
                          "(--unlabelled) only; a labelled dataset's test cases are already held out")
    return load_dataset(resolve_source(data, log), data.task, data.limits, log)


def excluded_cases(path: str) -> set[str]:
    """Case ids from a run's ``split.json`` (its ``test`` list) or a text file (one per line, # comments)."""
    file = Path(path)
    try:
        text = file.read_text()
        if file.suffix == ".json":
            ids = json.loads(text)["test"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("'test' is not a list of case ids")
            return set(ids)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"data.exclude_cases={path}: cannot read the cases to leave out ({type(e).__name__}: "
                          f"{e}); give a run's split.json or a .txt with one case id per line") from None
    lines = (line.strip() for line in text.splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def without_cases(corpus, excluded: set[str], log=print):
    """The corpus without the cases whose file name (without suffix) is excluded; listed ids that
    match no file are named (another naming scheme would otherwise exclude nothing, silently)."""
    from swinray.data.cases import case_id_of
    kept = tuple(c for c in corpus.cases if case_id_of(c.image[0]) not in excluded)
    unmatched = sorted(excluded - {case_id_of(c.image[0]) for c in corpus.cases})
    if len(kept) == len(corpus.cases):
        raise ConfigError(f"data.exclude_cases: none of its {len(excluded)} case id(s) names a file of the corpus "
                          f"(e.g. {', '.join(unmatched[:3])}); ids are file names without .nii/.nii.gz")
    log(f"corpus: {len(corpus.cases) - len(kept)} case(s) left out as listed in data.exclude_cases, "
        f"{len(kept)} kept" + (f"; {len(unmatched)} listed id(s) match no file: {', '.join(unmatched[:5])}"
                               if unmatched else ""))
    if not kept:
        raise ConfigError("data.exclude_cases leaves no case in the corpus")
    return replace(corpus, cases=kept)
