"""Preprocessing throughput: the Ray Data pipeline against a plain single-process MONAI loop.

Both apply the same MONAI transforms to the same cases and write the same cache files; the
baseline is what a user writes from MONAI's tutorials (LoadImaged and a for loop). Ray is started
before the clock (on a cluster it is already running). "cold" counts the Ray workers' start-up
(each imports torch and MONAI, about 7 s here); "warm" is the same job again on those workers,
the steady-state throughput. The headline ratio is warm; both are reported.

    python -m platform.bench preprocess --data ../shared/data/OpenKBP_HN_CT/imagesTr --set data.max_cases=50
"""
from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from swinray.config import BenchConfig
from swinray.data.cache import write_case, write_json
from swinray.data.datasets import Case
from swinray.data.preprocess import run_cases
from swinray.data.source import load_source
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import preprocess_transforms
from swinray.progress import Progress
from swinray.runtime import init_ray


def baseline_loop(cases: list[Case], task: TaskSpec, out: Path) -> None:
    """The tutorial way: one process, LoadImaged + the same chain, one file per case."""
    labelled = all(c.label for c in cases)
    keys = ["image", "label"] if labelled else ["image"]
    chain = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                     *preprocess_transforms(task, labelled).transforms])
    progress = Progress(len(cases), "case", "baseline")
    for case in cases:
        item = chain({"image": case.image[0], **({"label": case.label} if labelled else {})})
        label = item["label"].numpy()[0] if labelled else None
        write_case(out, case.case_id, item["image"].numpy(), label, {"case_id": case.case_id})
        progress.update()
    progress.close()


def _warm_page_cache(cases: list[Case]) -> None:
    for case in cases:
        for path in (*case.image, *([case.label] if case.label else [])):
            Path(path).read_bytes()


def bench_preprocess(cfg: BenchConfig, log=print) -> dict:
    dataset = load_source(cfg.data, log)
    cases = list(dataset.cases[: cfg.data.max_cases or None])
    _warm_page_cache(cases)
    cluster = init_ray(cfg.run)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="preprocess-", dir=cfg.out_dir))
    timings, rows = {}, []
    try:  # each run's output is deleted before the next, so no run pays for another's writeback
        log(f"baseline: single-process MONAI loop over {len(cases)} case(s)")
        start = time.perf_counter()
        baseline_loop(cases, dataset.task, work / "baseline")
        timings["baseline"] = time.perf_counter() - start
        shutil.rmtree(work / "baseline")
        for run in ("cold", "warm"):  # cold: fresh Ray workers import MONAI; warm: they have
            log(f"ours ({run} workers): Ray Data over {cluster['cpus']:g} CPU")
            start = time.perf_counter()
            rows = list(run_cases(cases, dataset.task, work / run, Progress(len(cases), "case", run)))
            timings[run] = time.perf_counter() - start
            shutil.rmtree(work / run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    written = sum(r["status"] == "written" for r in rows)
    rate = {k: (len(cases) if k == "baseline" else written) / v for k, v in timings.items()}
    summary = {"command": "bench", "target": "preprocess", "dataset": str(dataset.root),
               "cases": len(cases), "cpus": cluster["cpus"], "nodes": cluster["nodes"],
               "ratio": round(rate["warm"] / rate["baseline"], 3),
               "ratio_cold": round(rate["cold"] / rate["baseline"], 3),
               **{f"{k}_cases_per_s": round(v, 3) for k, v in rate.items()},
               "ours_worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in rows),
               "baseline_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               **{f"{k}_seconds": round(v, 2) for k, v in timings.items()},
               "rejected": len(cases) - written}
    write_json(Path(cfg.out_dir) / "preprocess.json", summary)
    return summary
