"""Resolve once: the config as requested becomes the config that runs, before any work.

A command's settings left to the data or the storage (``data.task="auto"``, ``data.spacing_mm`` and
``data.window_hu`` (the task's), ``model.roi_size=(0, 0, 0)``, ``model.in_channels=0``, an empty
``data.cache_dir``, ``run.aim_repo`` or ``run.experiment``, a relative ``seg.pretrained``) are settled
here and only here, the way nnU-Net writes its plans once.
The resolved config is what is saved as ``config.json`` (the request beside it as
``config.requested.json``), logged to Aim as hparams, and sent to workers with one small
``RunPaths``; resolving it again changes nothing.

    python -m platform.finetune --preset debug --print-config    # the resolved config
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swinray.config import (
    ConfigError,
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    ModelConfig,
    PreprocessConfig,
    PretrainConfig,
    RunConfig,
    SweepConfig,
    save_config,
    to_dict,
)
from swinray.errors import RunChanged
from swinray.storage import is_uri, local_path
from swinray.writable import writing_to

AIM_REPO_ENV = "SWINRAY_AIM_REPO"     # set on a cluster's head (cluster/*.yaml): the repo its `aim up` serves
STORAGE_ENV = "SWINRAY_STORAGE"         # where relative output paths (run.storage=outputs, ...) are rooted
JOB_OUTPUTS = Path("~/swinray")         # their root under `ray job submit` without $SWINRAY_STORAGE
CONFIG_FILE = "config.json"             # the resolved config: what ran
REQUESTED_FILE = "config.requested.json"  # the config as the user asked for it
RUN_STORAGE_KEY = "run.storage"         # the setting named when a run's folder cannot be written


def in_ray_job_package(folder: Path) -> bool:
    """Whether ``folder`` is a Ray job's unpacked ``--working-dir``, which Ray deletes with the job."""
    return folder.name.startswith("_ray_pkg_") or "runtime_resources" in folder.parts


def output_root() -> str:
    """Where relative output paths are rooted: ``$SWINRAY_STORAGE`` when set (a path or an object-store
    URI); else the working directory, unless it is a Ray job's unpacked working dir: then ``~/swinray``."""
    if os.environ.get(STORAGE_ENV):
        root = os.environ[STORAGE_ENV]
        return root if is_uri(root) else str(Path(root).expanduser())
    cwd = Path.cwd()
    return str(JOB_OUTPUTS.expanduser()) if in_ray_job_package(cwd) else str(cwd)


def output_root_note() -> str:
    """Why outputs go elsewhere than the working directory, for the log ("" when they do not)."""
    if os.environ.get(STORAGE_ENV) or not in_ray_job_package(Path.cwd()):
        return ""
    return (f"this is a Ray job's working directory, which Ray deletes: relative output paths go under "
            f"{JOB_OUTPUTS.expanduser()} (set ${STORAGE_ENV} or run.storage to choose)")


def output_path(path: str) -> str:
    """An output location (``run.storage``, a cache or phantom folder) as an absolute path or a URI."""
    if not path or is_uri(path) or Path(path).is_absolute():
        return path if not path or is_uri(path) else str(Path(path).resolve())
    root = output_root()
    return f"{root.rstrip('/')}/{path}" if is_uri(root) else str((Path(root) / path).resolve())


def run_dir(storage: str, name: str) -> Path:
    """A run's folder, ``<storage>/<name>``: local, or this node's mirror of an object store."""
    return local_path(output_path(storage)) / name


def aim_repo_for(aim_repo: str, storage: str) -> str:
    """``run.aim_repo`` if set, else ``$SWINRAY_AIM_REPO`` (a cluster's head sets it to the repo its
    ``aim up`` serves, so jobs need no flag), else ``<storage>`` (its ``.aim``): a folder on the
    machine that runs the command, whose driver alone writes to it (``swinray.aim_mirror``). Object
    storage cannot hold it, and an Aim server (aim://) is refused: Aim 3.29's has no authentication."""
    repo = aim_repo or os.environ.get(AIM_REPO_ENV, "")
    named = "run.aim_repo" if aim_repo else f"${AIM_REPO_ENV}"
    if is_uri(repo):
        raise ConfigError(f"{named}={repo}: the Aim repo is a folder on the machine that runs the command (the "
                          "driver copies every run into it, and `aim up --host 127.0.0.1` serves it); an Aim "
                          "server or object storage cannot be one: Aim 3.29's server has no authentication")
    if not repo and is_uri(storage):
        raise ConfigError(f"run.storage={storage}: Aim cannot write to object storage; set run.aim_repo "
                          f"(--set run.aim_repo=PATH) or ${AIM_REPO_ENV} to a folder on the machine that runs "
                          f"the command")
    return output_path(repo or storage)


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files are, computed once; the one part workers get beside the resolved config."""
    run_dir: str                        # <run.storage>/<run.name>: records, metrics log, exported weights
    cache: str = ""                     # the dataset's preprocessed cache, <data.cache_dir>/<task>-<hash>
    split: str = ""                     # split.json: the run's cases (pretraining: "training" only)


@dataclass(frozen=True)
class Resolved:
    """A command's resolved config, the request it came from, and where its files go."""
    cfg: Any
    requested: Any
    paths: RunPaths
    dataset: Any = None                 # swinray.data.cases.Dataset, read once; stays in the driver


# A rerun of a training run or a sweep under the same name resumes it, so it must be the same run:
# it may only go on for longer or run elsewhere. Keys (their last part) a rerun may change:
# A restored sweep keeps its own trial count and budgets (Tune's saved state), so it may only move.
# tta_flips: only the end-of-run test score uses it, never training or the choice of checkpoint.
# largest_component: training only measures it beside the Dice that chooses (its labelling counts
# within seg.max_minutes); the model file records the classes it chose at its best step.
# phantom_shape, like phantom_dir: only a phantom not yet written takes it; a run reads the phantom
# there (and a cache keyed by its files).
# aim_repo: only the driver's writer uses it (a folder on the driver's machine), so a run resumed from
# another machine, or from before there was no Aim server (aim://), goes on into the repo named now.
RESUMABLE_CHANGES = {"run": ("num_steps", "max_minutes", "tta_flips", "largest_component", "ray_address", "dashboard",
                             "max_failures", "num_checkpoints_kept", "cache_dir", "phantom_dir", "phantom_shape",
                             "aim_repo"),
                     "sweep": ("tta_flips", "largest_component", "ray_address", "dashboard", "cache_dir", "phantom_dir",
                               "phantom_shape", "aim_repo")}
RESUMABLE = ("checkpoint_*", "metrics.jsonl", "tune")   # what a started run or sweep leaves to resume from
# Settings added after runs were saved without them, at the value that is what those runs did: a saved
# run lacking one resumes while it is at that value (other missing settings count as changes).
ADDED_AT_FORMER_BEHAVIOUR = {"seg.pretrained_lr_scale": 1.0, "seg.cpu_bf16": False, "seg.tta_flips": False,
                             "seg.largest_component": False, "seg.schedule_within_max_minutes": False}
# Settings saved unset ("the task's") before config.json recorded what the task resolved them to: such a
# run is compared with the task its latest checkpoint's model.pt trained on (fine-tuning), if there is one.
RESOLVED_SINCE = {f"data.{key}": to_dict(DataConfig())[key] for key in ("spacing_mm", "window_hu")}
FROM_THE_DATA = ("data.spacing_mm", "data.window_hu", "model.roi_size")   # what "the task's" resolves to


def save(resolved: Resolved, folder: str | Path | None = None, log=print) -> Path:
    """``config.json`` (resolved) and ``config.requested.json`` into the run's folder; the first's path.
    A training run or sweep of the same name saved with another config is refused, never overwritten.
    The first write of a run: a folder that cannot be written stops it here, named (StorageError)."""
    folder = Path(folder or resolved.paths.run_dir)
    if isinstance(resolved.cfg, (PretrainConfig, FinetuneConfig, SweepConfig)) and \
            any(next(folder.glob(pattern), None) for pattern in RESUMABLE):
        check_same_run(folder / CONFIG_FILE, resolved.cfg, log)
    with writing_to(folder, "storage" if isinstance(resolved.cfg, SweepConfig) else RUN_STORAGE_KEY):
        save_config(resolved.requested, folder / REQUESTED_FILE)
        return save_config(resolved.cfg, folder / CONFIG_FILE)


def check_same_run(saved_path: Path, cfg, log=print) -> None:
    """Refuse to resume the run saved at ``saved_path`` with a config that differs in anything but
    ``RESUMABLE_CHANGES``: compared as saved, so a setting the saved file lacks (an older version's
    run, e.g. from before test splits) counts as a change, unless ``ADDED_AT_FORMER_BEHAVIOUR`` says
    what it was; a grid saved unset, with the task its checkpoint trained on (``RESOLVED_SINCE``).
    A config saved on another node (a mirror that lacks it) is not compared."""
    if not saved_path.exists():
        return
    try:
        saved = _flat(json.loads(saved_path.read_text()))
    except (OSError, ValueError):
        saved = {}
    allowed = RESUMABLE_CHANGES["sweep" if isinstance(cfg, SweepConfig) else "run"]
    def as_saved(key: str):
        return saved.get(key, ADDED_AT_FORMER_BEHAVIOUR.get(key.removeprefix("finetune."), "(not set)"))

    prefix = "finetune." if isinstance(cfg, SweepConfig) else ""
    unrecorded = {prefix + k for k, unset in RESOLVED_SINCE.items() if saved.get(prefix + k) == unset}
    if unrecorded:
        trained_on = {prefix + k: v for k, v in _grid_trained_on(saved_path.parent).items()}
        saved.update({k: trained_on[k] for k in unrecorded if k in trained_on})
        unrecorded -= set(trained_on)
        if unrecorded:
            log(f"warning: {saved_path.parent} was saved before config.json recorded the grid its task "
                f"resolved to ({', '.join(sorted(unrecorded))}), and no checkpoint model.pt here says it: "
                "it resumes on the grid its data resolves to now")
    changed = {k: (as_saved(k), v) for k, v in _flat(to_dict(cfg)).items()
               if as_saved(k) != v and k.rsplit(".", 1)[-1] not in allowed and k not in unrecorded}
    if changed:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:6])
        pins = [f"--set {k}={','.join(str(x) for x in was)}" for k, (was, _) in changed.items()
                if k.removeprefix("finetune.") in FROM_THE_DATA and isinstance(was, list)
                and all(isinstance(x, (int, float)) for x in was)]
        raise RunChanged(f"{saved_path.parent} already holds a run of this name with another config "
                         f"({listed}); a rerun resumes that run, so choose another name (--name, or "
                         f"--set run.name=...) or rerun it as it was (--config {saved_path}"
                         + (f", with {' '.join(pins)}: its data now resolves to others)" if pins else ")"))


def _grid_trained_on(folder: Path) -> dict:
    """The voxel size and HU window in the task of the latest checkpoint's model.pt under ``folder``
    (fine-tuning; {} without one here to read), as config.json records them."""
    import torch

    from swinray.train.state import MODEL_FILE
    models = sorted(folder.glob(f"checkpoint_*/{MODEL_FILE}"))
    try:
        task = torch.load(models[-1], map_location="cpu", weights_only=True)["task"]
        return {"data.spacing_mm": [float(s) for s in task["spacing_mm"]],
                "data.window_hu": [float(v) for v in task["window_hu"]] if task.get("window_hu") else [0.0, 0.0]}
    except Exception:   # none, or unreadable: nothing to compare with
        return {}


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def resolve_run(run: RunConfig) -> RunConfig:
    """Storage as an absolute path (a URI stays), the Aim repo and the experiment filled in."""
    storage = output_path(run.storage)
    return replace(run, storage=storage, aim_repo=aim_repo_for(run.aim_repo, storage),
                   experiment=run.experiment or run.name)


def resolve_data(data: DataConfig, storage: str, log=print):
    """(data with its folders placed and its task named, the dataset, its cache folder).

    Unset folders go under ``run.storage``: on a cluster that is the shared storage every node
    mounts, so every node reads the cases any node wrote. The built-in phantom is written if missing.
    The voxel size and HU window become the task's: config.json records the grid a run trained on,
    so a rerun that would resample differently (the data or its inferred task changed) is refused."""
    from swinray.data.cache import cache_dir_for
    from swinray.data.source import load_source
    data = place_folders(data, storage)
    dataset = load_source(data, log)
    dataset = replace(dataset, task=task_with_overrides(dataset.task, data))
    cache = cache_dir_for(dataset, data.cache_dir)
    task = dataset.task
    window = tuple(task.window_hu) if task.intensity == "ct_window" and task.window_hu else data.window_hu
    return replace(data, task=task.name, spacing_mm=tuple(task.spacing_mm), window_hu=window), dataset, cache


def task_with_overrides(task, data: DataConfig):
    """The task with the spacing and HU window ``data`` sets in its place; a window needs a CT task."""
    if any(data.window_hu):
        if task.intensity != "ct_window":
            raise ConfigError(f"data.window_hu={list(data.window_hu)}: the data ({task.name}) is {task.modality}, "
                              "not CT; a HU window applies to CT only")
        task = replace(task, window_hu=tuple(data.window_hu))
    return replace(task, spacing_mm=tuple(data.spacing_mm)) if any(data.spacing_mm) else task


def place_folders(data: DataConfig, storage: str) -> DataConfig:
    """``data`` with its unset folders (cache, phantom) under ``storage`` and its paths absolute. Under
    an object store they are URIs: each node maps them to its own mirror (``storage.local_path``)."""
    root = output_path(storage).rstrip("/")

    def absolute(path: str) -> str:             # inputs: relative to the working directory
        return path if not path or is_uri(path) else str(Path(path).resolve())
    return replace(data, source=absolute(data.source), unlabelled=tuple(absolute(u) for u in data.unlabelled),
                   cache_dir=output_path(data.cache_dir) or f"{root}/cache",
                   phantom_dir=output_path(data.phantom_dir) or f"{root}/phantom")


def resolve_model(model: ModelConfig, task, for_segmentation: bool) -> ModelConfig:
    """Channels from the task; for segmentation the ROI too when it is left to the task (0, 0, 0),
    for pretraining as many output channels as input ones (the reconstruction head rebuilds the
    input). A value that contradicts the data is refused here, not in a worker."""
    from swinray.models.ssl import check_roi_size  # here: the command line's --help stays free of torch
    roi = tuple(task.roi_size) if not any(model.roi_size) else model.roi_size
    out = task.num_classes if for_segmentation else model.in_channels or task.num_channels
    for name, value, data in (("in_channels", model.in_channels, task.num_channels), ("out_channels",
                                                                                      model.out_channels, out)):
        if value not in (0, data):
            raise ConfigError(f"model.{name}={value}: the data ({task.name}) has {data}; leave it 0 (from the data)")
    try:
        check_roi_size(roi)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return replace(model, roi_size=roi, in_channels=task.num_channels, out_channels=out)


def resolve_preprocess(cfg: PreprocessConfig, log=print) -> Resolved:
    run = resolve_run(cfg.run)
    data, dataset, cache = resolve_data(cfg.data, run.storage, log)
    resolved = replace(cfg, data=data, run=run)
    return Resolved(resolved, cfg, RunPaths(str(run_dir(run.storage, run.name)), str(cache)), dataset)


def resolve_pretrain(cfg: PretrainConfig, log=print) -> Resolved:
    run = resolve_run(cfg.run)
    data, dataset, cache = resolve_data(cfg.data, run.storage, log)
    model = resolve_model(cfg.model, dataset.task, for_segmentation=False)
    resolved = replace(cfg, data=data, model=model, run=run)
    folder = run_dir(run.storage, run.name)
    return Resolved(resolved, cfg, RunPaths(str(folder), str(cache), str(folder / "split.json")), dataset)


def locate_pretrained(pretrained: str) -> str:
    """A pretrained file as workers on any node find it: an absolute (shared) path, or an object-store
    URI kept as such (each node downloads it to its mirror)."""
    return pretrained if not pretrained or is_uri(pretrained) else str(Path(pretrained).resolve())


def resolve_finetune(cfg: FinetuneConfig, log=print, split_file: str = "") -> Resolved:
    """``split_file``: where the run's split is recorded (default ``<run dir>/split.json``)."""
    run = resolve_run(cfg.run)
    data, dataset, cache = resolve_data(cfg.data, run.storage, log)
    model = resolve_model(cfg.model, dataset.task, for_segmentation=True)
    seg = replace(cfg.seg, pretrained=locate_pretrained(cfg.seg.pretrained))
    resolved = replace(cfg, data=data, model=model, seg=seg, run=run)
    folder = run_dir(run.storage, run.name)
    return Resolved(resolved, cfg, RunPaths(str(folder), str(cache), split_file or str(folder / "split.json")),
                    dataset)


def evaluation_dir(cfg: EvaluateConfig) -> Path:
    """``<out_dir>/<model's run>-on-<dataset>``: a new folder for every evaluation (``-2``, ``-3``, ...
    after one that finished), so no evaluation's scores overwrite another's."""
    if not cfg.checkpoint or not cfg.data:
        raise ConfigError("evaluate needs --checkpoint FILE (model.pt from finetune) and --data PATH")
    model = Path(cfg.checkpoint.split("://", 1)[-1])
    data = Path(cfg.data.rstrip("/"))
    name = f"{model.parent.name or model.stem}-on-{data.name if not data.suffix else data.parent.name}"
    root, n = local_path(output_path(cfg.out_dir)), 1
    while (root / (name if n == 1 else f"{name}-{n}") / "per_case.csv").exists():
        n += 1
    return root / (name if n == 1 else f"{name}-{n}")


def sweep_dir(cfg: SweepConfig, name: str | None = None) -> Path:
    return run_dir(cfg.storage, name or cfg.name)


def resolve_sweep_task(cfg: SweepConfig, target: FinetuneConfig, name: str, log=print) -> Resolved:
    """One task of a sweep over several (``sweep_targets``): its own resolved sweep config, saved in
    its own folder ``<storage>/<name>``, with the split recorded there."""
    folder = sweep_dir(cfg, name)
    base = resolve_finetune(target, log, split_file=str(folder / "split.json"))
    requested = replace(cfg, finetune=target, tasks=(), name=name)
    return Resolved(replace(requested, storage=output_path(cfg.storage), finetune=base.cfg), requested,
                    replace(base.paths, run_dir=str(folder)), base.dataset)


def resolve_sweep(cfg: SweepConfig, log=print) -> Resolved:
    """One task: its fine-tuning base resolved whole (a sweep over several tasks resolves each when
    it gets to it, into that task's sweep folder)."""
    storage = output_path(cfg.storage)
    folder = sweep_dir(cfg)
    if cfg.tasks:
        run = replace(cfg.finetune.run, aim_repo=aim_repo_for(cfg.finetune.run.aim_repo, cfg.finetune.run.storage))
        resolved = replace(cfg, storage=storage, finetune=replace(cfg.finetune, run=run))
        return Resolved(resolved, cfg, RunPaths(str(folder)))
    base = resolve_finetune(cfg.finetune, log, split_file=str(folder / "split.json"))
    return Resolved(replace(cfg, storage=storage, finetune=base.cfg), cfg,
                    replace(base.paths, run_dir=str(folder)), base.dataset)
