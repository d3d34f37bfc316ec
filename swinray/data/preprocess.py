"""Distributed preprocessing: Ray Data maps every case through validation and MONAI transforms.

Before any worker starts, the driver reads every case's headers and refuses a case that would cost
far more than the dataset's median one (``swinray.data.admission``). Each Ray task validates one
admitted case (whole gzip stream, voxels, geometry, labels), transforms it and writes it to the
cache, measuring its worker's peak memory over that case (``swinray.peak_rss``); the driver only
collects small JSON rows for the manifest. A bad case becomes a row in ``rejected.json`` and never
stops the run; finished cases, and cases refused for their input whose files and limits are
unchanged, are skipped on rerun, so an interrupted run resumes where it stopped and a finished one
starts no Ray at all. A cache that cannot be written
(no permission, read-only, full) is the opposite: it stops the run with one StorageError, tried
before Ray starts and named when it appears in a worker, and refuses no case.

    python -m platform.preprocess --data ../shared/data/Task04_Hippocampus
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import ray

from swinray import peak_rss
from swinray.config import PreprocessConfig, RunConfig, VolumeLimits
from swinray.data.admission import admit
from swinray.data.cache import CACHE_KEY, cached_row, fingerprint, rejection_path
from swinray.data.case_pipeline import process_case
from swinray.data.cases import Case, Dataset
from swinray.data.tasks import TaskSpec
from swinray.errors import StorageError
from swinray.progress import Progress
from swinray.resolve import Resolved, resolve_preprocess, save
from swinray.runtime import init_ray, keep_freed_memory
from swinray.storage import shown, write_json
from swinray.writable import check_writable, writing_to

# Several cases per Ray task amortise Ray Data's per-task scheduling gap (0.04-0.15 s measured on
# 2 cores, against 0.15-0.3 s of work per CT); at least 4 tasks per CPU keep the tail balanced.
_CASES_PER_TASK = 8
_TASKS_PER_CPU = 4


def _process_row(row: dict, cases: list[Case], task: TaskSpec, cache: Path, limits: VolumeLimits) -> dict:
    """One case per row; its result as a JSON string so rows of any shape share one schema. The row
    carries the worker's peak memory while this case ran: Ray reuses worker processes, so their
    lifetime peak would carry earlier cases' (or runs') into it."""
    keep_freed_memory()     # once per worker process
    per_case = peak_rss.reset()
    result = process_case(cases[row["id"]], task, cache, limits)
    result["worker_peak_rss_mb"] = peak_rss.peak_mb()
    result["worker_peak_rss_scope"] = "case" if per_case else "process"
    return {"row": json.dumps(result)}


def run_cases(todo: list[Case], task: TaskSpec, cache: Path, progress: Progress | None = None,
              limits: VolumeLimits = VolumeLimits()):
    """Yield one row per case, computed by Ray Data tasks spread over the cluster (1 CPU each)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts cases, Ray's counts blocks
    # One operator, nothing to reserve CPUs for: with reservation on, Ray Data 2.60 holds back all
    # but one task until the first finishes (1.1 s of one idle core per run, measured on 2 CPUs)
    ctx.op_resource_reservation_enabled = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = min(len(todo), max(_TASKS_PER_CPU * cpus, math.ceil(len(todo) / _CASES_PER_TASK)))
    ds = ray.data.range(len(todo), override_num_blocks=blocks)
    rows = ds.map(_process_row, fn_kwargs={"cases": todo, "task": task, "cache": cache, "limits": limits}, num_cpus=1)
    for item in rows.iter_rows():
        row = json.loads(item["row"])
        if progress:
            progress.update()
        yield row


def preprocess_dataset(dataset: Dataset, cache: Path, max_cases: int, run: RunConfig, log=print) -> dict:
    """Preprocess ``dataset`` into ``cache`` (finished cases are skipped); returns the JSON summary."""
    log(f"dataset {shown(dataset.root)} (task {dataset.task.name}, {len(dataset.cases)} cases) -> cache {shown(cache)}")
    check_writable(cache, CACHE_KEY)
    cases = dataset.cases[: max_cases or None]
    rows, todo, peaks = {}, [], []
    rejected = [{"case_id": None, "status": "rejected", "reason": r} for r in dataset.rejected]
    admission = admit(cases, dataset.task.spacing_mm, dataset.limits)
    if admission.median_mb is not None:
        log(f"admission: the median case costs {admission.median_mb:g} MB to load and resample (from the headers); "
            f"{len(admission.refused)} case(s) refused above {dataset.limits.max_times_median:g}x that")
    for case, reason in admission.refused:      # decided afresh each run: it depends on the other cases
        log(f"rejected: {reason}")
        rejected.append({"case_id": case.case_id, "split": case.split, "image": list(case.image),
                         "label": case.label, **({"collection": case.collection} if case.collection else {}),
                         "status": "rejected", "reason": reason})
    remembered = 0
    for case in admission.admitted:
        row = cached_row(cache, case, dataset.limits)
        if row is None:
            todo.append(case)
        elif row["status"] == "rejected":
            rejected.append(row)
            remembered += 1
        else:
            rows[case.case_id] = row
    log(f"{len(rows)} case(s) already cached, {remembered} already refused (files and limits unchanged), "
        f"{len(todo)} to do")
    written = 0
    if todo:
        cluster = init_ray(run)
        log(f"ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPU")
        progress = Progress(len(todo), "case", "preprocess")
        try:
            for row in run_cases(todo, dataset.task, cache, progress, dataset.limits):
                peaks.append((row["worker_peak_rss_mb"], row["worker_peak_rss_scope"]))
                if row["status"] == "fault":    # the cache's fault, not the case's: the cases written so far stay
                    raise StorageError(*row["fault"])
                if row["status"] == "written":
                    rows[row["case_id"]] = row
                    written += 1
                else:
                    log(f"rejected: {row['reason']}")
                    rejected.append(row)
                    if "source_stamp" in row:       # refused for its input: remembered until it changes
                        with writing_to(cache, CACHE_KEY):
                            write_json(rejection_path(cache, row["case_id"]), row)
        finally:
            progress.close()
    ordered = [rows[c.case_id] for c in cases if c.case_id in rows]
    with writing_to(cache, CACHE_KEY):
        write_json(cache / "manifest.json", {"task": dataset.task.name, "dataset": str(dataset.root),
                                             "cases": ordered})
        write_json(cache / "fingerprint.json", fingerprint(ordered))
        write_json(cache / "rejected.json", rejected)
        write_json(cache / "task.json", json.loads(json.dumps(dataset.task.__dict__)))
    # This run's workers only (None when none ran): a cached row's peak is an earlier run's
    peak = max((mb for mb, _ in peaks), default=None)
    scope = None if not peaks else "case" if all(s == "case" for _, s in peaks) else "process"
    return {"command": "preprocess", "task": dataset.task.name, "cases_written": written,
            "cases_skipped": len(ordered) - written, "cases_rejected": len(rejected),
            "cache_dir": shown(cache), "manifest": shown(cache / "manifest.json"),
            "rejected_report": shown(cache / "rejected.json"), "median_case_mb": admission.median_mb,
            "worker_peak_rss_mb": peak, "worker_peak_rss_scope": scope, "ok": bool(ordered)}


def preprocess(resolved: Resolved, log=print) -> dict:
    cfg: PreprocessConfig = resolved.cfg
    return preprocess_dataset(resolved.dataset, Path(resolved.paths.cache), cfg.data.max_cases, cfg.run, log)


def run_preprocess(cfg: PreprocessConfig, log=print) -> dict:
    """Resolve, save and run: what ``python -m platform.preprocess`` does."""
    resolved = resolve_preprocess(cfg, log)
    save(resolved)
    return preprocess(resolved, log)
