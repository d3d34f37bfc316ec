"""Label efficiency: test-split Dice against the fraction of labelled training cases, scratch vs SSL weights.

Every arm (``scratch``, then one per ``pretrained`` file) fine-tunes with the same preset at each
fraction and seed; a seed changes the split's shuffle (which cases form each fraction; smaller
fractions are subsets of larger ones, ``split_cases``) and the training's randomness, and both arms of
a seed share them, so the SSL - scratch difference is paired by seed. Each run trains until
``patience_validations`` validations bring no better validation Dice (``budget_steps`` caps it) and
is scored once on the test split, which chose nothing: the held-out cases are the same for every seed.
The preset's wall-time limit is off: a run's length is counted in steps, so a busy machine or a
slower node changes how long the study takes, never what it measures.

Runs are ``<out_dir>/label_efficiency/<arm>-f<fraction>-s<seed>``. A finished run leaves its row
beside it, and running the bench again reuses every row whose run config is unchanged and resumes
unfinished runs: the study can be run in parts (``--fractions 0.1`` first). A row that no longer
matches (other settings, another grid, other weights in the encoder file) is not reused: a run
folder that fine-tuning would not resume as it is, or whose encoder was another, is kept aside as
``<run>.superseded-<UTC time>`` and the run starts again (``make_way``, ``run_or_restart``).
A run that fails is reported in the table and the others go on; the table is
rewritten after every run (``write_study``). ``ssl_set`` makes a variant of the SSL arms (how their
pretrained layers fine-tune: ``seg.pretrained_lr_scale``, ``seg.freeze_encoder_*``), named and tabled
apart (``label_efficiency+pretrained_lr_scale=0.1.md``) while the scratch rows are reused.

    python -m platform.bench label-efficiency --data ../shared/data/OpenKBP_HN_OAR \\
        --pretrained outputs/ssl-openkbp/encoder.pt --set finetune_preset=cpu-headneck-oar
"""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from swinray.bench import finetune_base
from swinray.bench.label_efficiency_table import SCRATCH, markdown_table, plot, summarise
from swinray.config import BenchConfig, ConfigError, FinetuneConfig, apply_overrides, parse_assignments, to_dict
from swinray.errors import RunChanged, StorageError
from swinray.report.runs import flatten
from swinray.resolve import ADDED_AT_FORMER_BEHAVIOUR, locate_pretrained, resolve_finetune, run_dir
from swinray.storage import file_sha256, local_file, remote_of, write_json, write_text
from swinray.train.finetune import PRETRAINED_REPORT, run_finetune
from swinray.train.precision import cpu_name

ROW_FILE = "label_efficiency_row.json"


# What the bench sets for every run: an SSL arm that changed them would not be paired with scratch
BENCH_KEYS = ("run.", "split.", "data.", "seg.pretrained=", "seg.patience_validations=", "optim.num_steps=",
              "seg.tta_flips=", "seg.largest_component=")


def ssl_settings(cfg: BenchConfig) -> dict:
    """``cfg.ssl_set`` as typed fine-tuning overrides, refusing what the bench sets for every run."""
    try:
        settings = parse_assignments([s.strip() for s in cfg.ssl_set], FinetuneConfig())
    except ConfigError as e:
        raise ConfigError(f"ssl_set: {e}") from None
    for key in settings:
        if any(f"{key}=".startswith(reserved) for reserved in BENCH_KEYS):
            raise ConfigError(f"ssl_set: {key} is the bench's to set for every run (the arms must share "
                              "data, split, seeds and budget to be paired); set how the SSL arms fine-tune instead, "
                              "e.g. seg.pretrained_lr_scale=0.1")
    return settings


def _text(value) -> str:
    return ",".join(map(_text, value)) if isinstance(value, (list, tuple)) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def settings_suffix(cfg: BenchConfig) -> str:
    """What names an SSL arm fine-tuned with ``ssl_set``, and its table: ``+pretrained_lr_scale=0.1``
    (from the values read, so 0.10 and 1e-1 name the same arm)."""
    return "".join(f"+{key.rsplit('.', 1)[-1]}={_text(value)}" for key, value in ssl_settings(cfg).items())


def arms(pretrained: tuple[str, ...], settings: str = "") -> list[tuple[str, str]]:
    """(arm name, encoder file) pairs, scratch first; a pretraining run's encoder.pt is named after its run,
    and then after the ``settings`` its arm fine-tunes with (``settings_suffix``)."""
    out, seen = [(SCRATCH, "")], {SCRATCH}
    for path in pretrained:
        file = local_file(path)            # an s3:// encoder: downloaded
        if not file.is_file():
            raise ConfigError(f"pretrained={path}: no such encoder file")
        name = (file.parent.name if file.stem == "encoder" and file.parent.name else file.stem) + settings
        while name in seen:
            name += "+"
        seen.add(name)
        out.append((name, locate_pretrained(path)))
    return out


def run_config(cfg: BenchConfig, arm: str, encoder: str, fraction: float, seed: int) -> FinetuneConfig:
    """The fine-tuning config of one arm at one fraction and seed; arms differ only in their weights and
    in ``ssl_set`` (SSL arms only: scratch is the preset itself)."""
    base = finetune_base(cfg)
    base = replace(base, run=replace(base.run, name=f"{arm}-f{fraction:g}-s{seed}",
                                                    storage=str(Path(cfg.out_dir) / "label_efficiency"),
                                                    ray_address=cfg.run.ray_address))
    # Test scores in one pass and without post-processing: the study compares training, every row
    # alike (those scored before test-time flips and post-processing existed too), at half the scoring time
    overrides = {"seg.pretrained": encoder, "split.label_fraction": fraction, "split.seed": seed, "run.seed": seed,
                 "seg.patience_validations": cfg.patience_validations, "seg.tta_flips": False,
                 "seg.largest_component": False}
    if cfg.budget_steps:
        overrides["optim.num_steps"] = cfg.budget_steps
    if encoder:
        overrides.update(ssl_settings(cfg))
    return apply_overrides(base, overrides)


def resolved_grid(run_cfg: FinetuneConfig, log) -> dict:
    """The voxel size and HU window the study's runs resample to (they share their data)."""
    data = resolve_finetune(run_cfg, log).cfg.data
    return {"spacing_mm": list(data.spacing_mm), "window_hu": list(data.window_hu)}


def _reuse_key(run_cfg: FinetuneConfig, grid: dict) -> dict:
    """What makes a finished row reusable: the run config as requested, wherever Ray runs, the grid
    its data resolves to (a requested "the task's" is whatever the task resolves to now; a row saved
    without it is not reused) and the encoder's content (pretraining again into the same file makes new rows)."""
    encoder = run_cfg.seg.pretrained
    digest = file_sha256(encoder) if encoder else ""
    return {**to_dict(replace(run_cfg, run=replace(run_cfg.run, ray_address=""))), "grid": grid,
            "encoder_sha256": digest}


# Where the encoder file sits (made absolute by ``arms``): its content is the key (``encoder_sha256``),
# so a study carries on from another checkout or a copied encoder
LOCATION_ONLY = {"seg.pretrained"}


def changed_settings(saved: dict, current: dict) -> list[str]:
    """What differs between a finished row's recorded key and the run asked for now: a setting it
    recorded with another value, but not the encoder's path (``LOCATION_ONLY``), and a setting the
    platform gained since (absent from the row) away from what that run did (``ADDED_AT_FORMER_BEHAVIOUR``,
    else the default); so a study spanning sessions keeps its rows across new features and checkouts."""
    saved, current = flatten(saved), flatten(current)
    former = {**flatten(to_dict(FinetuneConfig())), **ADDED_AT_FORMER_BEHAVIOUR}
    return [key for key, value in current.items() if key not in LOCATION_ONLY and
            not (saved[key] == value if key in saved else key in former and former[key] == value)]


def same_run(saved: dict, current: dict) -> bool:
    """Whether a finished row's recorded key describes the run asked for now (``changed_settings``)."""
    return not changed_settings(saved, current)


def set_aside(path: Path) -> Path:
    """Move a run folder or row file out of its name's way, kept whole as ``<name>.superseded-<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.superseded-{stamp}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.superseded-{stamp}-{n}")
    try:
        path.rename(target)
    except OSError as e:
        raise StorageError(target, e.errno or errno.EIO, "out_dir") from None
    return target


def recorded_encoder(folder: Path) -> str | None:
    """The sha256 of the encoder a run folder's own run started from, as its ``pretrained_report.json``
    says ("" for a run without one, None when unknown: a report from before reports recorded it)."""
    report = folder / PRETRAINED_REPORT
    try:
        return json.loads(report.read_text()).get("sha256") if report.is_file() else ""
    except (OSError, ValueError):
        return None


def make_way(row_file: Path, wanted: dict) -> Path:
    """Out of the way of the run asked for (``wanted``), what a row that no longer matches it leaves: the
    row file alone while the folder's own run began from the encoder wanted (fine-tuning then reuses
    it, resumes it, or refuses it as another run, ``run_or_restart``); else the whole folder, whose
    former weights a rerun would take as finished and score as the new row. Returns where it went."""
    folder = row_file.parent
    if remote_of(folder) is not None:
        raise ConfigError(f"{folder}: its row ({row_file.name}) is not the run asked for now, and a folder in "
                          "object storage cannot be moved aside here: move it away, or choose another out_dir")
    return set_aside(row_file if recorded_encoder(folder) == wanted["encoder_sha256"] else folder)


def run_or_restart(run_cfg: FinetuneConfig, log) -> dict:
    """``run_finetune``; a run folder that holds another run of the name (other settings, or weights
    its encoder file no longer holds: ``RunChanged``) is kept aside and the run started again."""
    try:
        return run_finetune(run_cfg, log)
    except RunChanged as e:
        folder = run_dir(run_cfg.run.storage, run_cfg.run.name)
        if remote_of(folder) is not None:      # object storage: not ours to move from here
            raise
        kept = set_aside(folder)
        log(f"label efficiency: {run_cfg.run.name}: {e}. Kept as {kept}, and run again")
        return run_finetune(run_cfg, log)


def held_out_images_in_pretraining(encoder: str, split_file: Path) -> list[str]:
    """The run's test cases whose image the encoder's pretraining run listed (its ``split.json`` beside
    ``encoder.pt``; corpus ids are ``<collection>-<file>``): a score on them is not held out from SSL."""
    if not encoder:
        return []
    pretraining_split = local_file(encoder).parent / "split.json"
    if not pretraining_split.is_file() or not split_file.is_file():
        return []
    seen = {case for ids in json.loads(pretraining_split.read_text()).values() if isinstance(ids, list)
            for case in ids}
    return sorted(t for t in json.loads(split_file.read_text())["test"]
                  if t in seen or any(s.endswith(f"-{t}") for s in seen))


def _train_seconds(metrics_log: str) -> float | None:
    rows = [json.loads(line) for line in Path(metrics_log).read_text().splitlines() if line.strip()]
    return rows[-1].get("elapsed_s") if rows else None


def row_file_of(run_cfg: FinetuneConfig) -> Path:
    return local_file(run_dir(run_cfg.run.storage, run_cfg.run.name) / ROW_FILE)   # where the run writes it


def reusable_row(run_cfg: FinetuneConfig, grid: dict) -> dict | None:
    """The row a finished run left, if it is the run asked for now (``changed_settings``) and whole; else None."""
    try:
        saved = json.loads(row_file_of(run_cfg).read_text())
        row = saved["row"]
        whole = isinstance(row.get("test_dice"), float) and {"arm", "fraction", "seed"} <= row.keys()
        return row if whole and not changed_settings(saved.get("config") or {}, _reuse_key(run_cfg, grid)) else None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # none, or unreadable: one_run says which
        return None


def one_run(run_cfg: FinetuneConfig, row: dict, log, grid: dict) -> dict:
    """A finished run's row (reused when its config and ``grid`` are unchanged), else the run itself."""
    row_file = row_file_of(run_cfg)
    try:
        reused = reusable_row(run_cfg, grid)
        if reused is not None:
            log(f"label efficiency: {row['run']} finished before: test Dice {reused['test_dice']:.4f} (reused)")
            return reused
        if row_file.is_file():                  # another run's row: out of this one's way
            wanted = _reuse_key(run_cfg, grid)
            changed = changed_settings(json.loads(row_file.read_text()).get("config") or {}, wanted)
            if not changed:
                raise ValueError(f"{row_file}: the row of this run, but not a whole one (no test Dice, arm, "
                                 "fraction or seed); move it away to run the run again")
            kept = make_way(row_file, wanted)
            log(f"label efficiency: {row['run']} finished before with other settings ({', '.join(changed[:4])}"
                f"{', ...' if len(changed) > 4 else ''}): kept as {kept}, and run again")
        summary = run_or_restart(run_cfg, log)
    except StorageError:    # a full or refused disk is no run's failure: every run after would meet it too
        raise
    except Exception as e:  # one failed run is a row in the table, not the end of the bench
        log(f"label efficiency: {row['run']} failed: {type(e).__name__}: {e}")
        return {**row, "test_dice": None, "error": f"{type(e).__name__}: {e}"}
    row = {**row, "test_dice": summary["test_dice"], "test_dice_per_class": summary["test_dice_per_class"],
           "val_dice": summary["best_val_dice"], "best_step": summary["best_step"], "steps": summary["steps"],
           "training_cases": summary["num_training_cases"], "validation_cases": summary["num_validation_cases"],
           "test_cases": summary["num_test_cases"], "train_seconds": _train_seconds(summary["metrics_log"]),
           "model": summary["model"], "task": summary["task"], "train_bf16": summary.get("train_bf16"),
           "cpu": "" if run_cfg.run.ray_address or os.environ.get("RAY_ADDRESS") else cpu_name(),  # local workers'
           "test_images_seen_in_pretraining": len(held_out_images_in_pretraining(run_cfg.seg.pretrained,
                                                                                  Path(summary["split"])))}
    if row["test_images_seen_in_pretraining"]:
        log(f"warning: {row['run']}: the encoder's pretraining saw {row['test_images_seen_in_pretraining']} of its "
            f"{row['test_cases']} test images (pretrain with data.exclude_cases=<a run's split.json>)")
    if row["test_dice"] is None or summary.get("num_test_rejected"):
        return {**row, "test_dice": None, "error": f"{summary.get('num_test_rejected')} test case(s) could not be "
                "scored" if summary.get("num_test_rejected") else "no test split to score (split.test_fraction is 0)"}
    write_json(row_file, {"config": _reuse_key(run_cfg, grid), "row": row})
    log(f"label efficiency: {row['run']}: test Dice {row['test_dice']:.4f} (validation {row['val_dice']:.4f}, "
        f"best at step {row['best_step']} of {row['steps']})")
    return row


def write_study(cfg: BenchConfig, rows: list[dict], names: list[str], planned: int) -> dict:
    """The table, plot and JSON of ``rows`` (of ``planned`` runs), rewritten after every run: a study run
    in parts, stopped midway, or on a machine that is lost shows every cell it has finished."""
    out_dir, stem = Path(cfg.out_dir), "label_efficiency" + settings_suffix(cfg)    # a variant's beside the study's
    task = next((r["task"] for r in rows if r.get("task")), cfg.data.task)
    seeds = [cfg.run.seed + i for i in range(cfg.seeds)]
    cells = summarise(rows, names)
    so_far = "" if len(rows) == planned else f", {len(rows)} of {planned} runs so far"
    png = plot(cells, names, f"{task}: {cfg.finetune_preset}, {len(seeds)} seed(s), patience "
               f"{cfg.patience_validations} validations{so_far}", out_dir / f"{stem}.png")
    write_text(out_dir / f"{stem}.md", markdown_table(cells, names))
    failed = [r for r in rows if r.get("test_dice") is None]
    result = {"command": "bench", "target": "label-efficiency", "task": task, "preset": cfg.finetune_preset,
              "ssl_set": list(cfg.ssl_set), "fractions": sorted(set(cfg.fractions)), "seeds": seeds, "arms": names,
              "runs": len(rows), "runs_planned": planned, "failed": len(failed),
              "cells": cells, "table": str(out_dir / f"{stem}.md"), "plot": str(png),
              "results": str(out_dir / f"{stem}.json"), "ok": not failed and len(rows) == planned}
    write_json(out_dir / f"{stem}.json", {**result, "rows": rows})
    return result


def bench_label_efficiency(cfg: BenchConfig, log=print) -> dict:
    fractions = sorted(set(cfg.fractions))     # BenchConfig checked them
    seeds = [cfg.run.seed + i for i in range(cfg.seeds)]
    arm_list = arms(cfg.pretrained, settings_suffix(cfg))
    if cfg.ssl_set and len(arm_list) == 1:
        raise ConfigError(f"ssl_set={list(cfg.ssl_set)}: sets how the SSL arms fine-tune, but no --pretrained "
                          "file gives an SSL arm")
    for arm, encoder in arm_list:              # a setting out of range fails now, not after the first runs
        try:
            run_config(cfg, arm, encoder, fractions[0], seeds[0])
        except ConfigError as e:
            raise ConfigError(f"ssl_set={list(cfg.ssl_set)}: {e}" if encoder and cfg.ssl_set else str(e)) from None
    grid = resolved_grid(run_config(cfg, *arm_list[0], fractions[0], seeds[0]), log)
    names = [a for a, _ in arm_list]
    # The smallest fraction first: the headline comes first
    plan = [({"arm": arm, "pretrained": encoder or None, "fraction": fraction, "seed": seed},
             run_config(cfg, arm, encoder, fraction, seed))
            for fraction in fractions for seed in seeds for arm, encoder in arm_list]
    finished = [reusable_row(run_cfg, grid) for _, run_cfg in plan]   # tabled before the loop reaches them
    if any(finished):                           # where a resumed study stands, before its first run
        write_study(cfg, [r for r in finished if r], names, len(plan))
    rows = []
    for i, (row, run_cfg) in enumerate(plan):
        log(f"label efficiency: {row['arm']} at fraction {row['fraction']:g}, seed {row['seed']} (up to "
            f"{run_cfg.optim.num_steps} steps, patience {run_cfg.seg.patience_validations} validations) -> "
            f"{run_cfg.run.name}")
        rows.append(one_run(run_cfg, {**row, "run": run_cfg.run.name}, log, grid))
        result = write_study(cfg, rows + [r for r in finished[i + 1:] if r], names, len(plan))
        if finished[i] is None and result["runs"] < len(plan):    # a run that trained: where the table stands
            log(f"label efficiency: the table, {result['runs']} of {len(plan)} runs so far: {result['table']}")
    log("label efficiency (test Dice, mean ± sd over seeds; the test split chose nothing):\n"
        + markdown_table(result["cells"], names))
    return result
