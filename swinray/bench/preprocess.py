"""Preprocessing throughput: the Ray Data pipeline against a plain single-process MONAI loop.

Both apply the same MONAI transforms to the same cases and write the same cache files; the
baseline is what a user writes from MONAI's tutorials (LoadImaged and a for loop). Ray is started
before the clock (on a cluster it is already running). "cold" counts the Ray workers' start-up
(each imports torch and MONAI, about 7 s here); "warm" is the same job again on those workers.

The headline ratio compares equal cores: ours on the cluster's N CPUs against the baseline on N
torch threads (``ratio_equal_cores``). The baseline on one thread is reported beside it
(``ratio_vs_one_thread_baseline``: Ray runs every task on one thread, OMP_NUM_THREADS=1, so this is
the per-task speed-up times the workers). The machine's speed drifts by 10-20% over minutes, so
``rounds`` alternate the three timed runs and the rates are pooled over all rounds.

    python -m platform.bench preprocess --data ../shared/data/OpenKBP_HN_CT/imagesTr --set data.max_cases=50
"""
from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from swinray.config import BenchConfig
from swinray.data.cache import write_case
from swinray.data.cases import Case
from swinray.data.preprocess import run_cases
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import preprocess_transforms
from swinray.errors import ConfigError
from swinray.progress import Progress
from swinray.resolve import resolve_data
from swinray.runtime import init_ray
from swinray.storage import write_json


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


def _timed(run, out: Path) -> float:
    """Seconds for ``run(out)``; its output is deleted after, so no run pays for another's writeback."""
    start = time.perf_counter()
    run(out)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def _baseline(cases: list[Case], task: TaskSpec, threads: int):
    def run(out: Path) -> None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            baseline_loop(cases, task, out)
        finally:
            torch.set_num_threads(previous)
    return run


def throughput(timings: dict[str, list[float]], cases: int, written: int, cold_s: float,
               equal_threads: int) -> dict:
    """Cases/s of each timed run pooled over the rounds (only written cases count as our throughput)
    and the ratios, each named for what it compares."""
    rate = {name: cases * len(t) / sum(t) for name, t in timings.items()}
    rate["ours_warm"] *= written / cases
    rate["ours_cold"] = written / cold_s
    base_1, base_eq = rate["baseline_1_thread"], rate[f"baseline_{equal_threads}_threads"]
    round_ratios = [(written / o) / (cases / b)      # as the pooled ratio: only written cases are ours
                    for b, o in zip(timings[f"baseline_{equal_threads}_threads"], timings["ours_warm"])]
    return {"ratio_equal_cores": round(rate["ours_warm"] / base_eq, 3),
            "ratio_vs_one_thread_baseline": round(rate["ours_warm"] / base_1, 3),
            "ratio_cold_equal_cores": round(rate["ours_cold"] / base_eq, 3),
            "round_ratios_equal_cores": [round(r, 3) for r in round_ratios],
            "median_round_ratio_equal_cores": round(statistics.median(round_ratios), 3),
            **{f"{k}_cases_per_s": round(v, 3) for k, v in rate.items()}}


def bench_preprocess(cfg: BenchConfig, log=print) -> dict:
    _, dataset, _ = resolve_data(cfg.data, cfg.run.storage, log)
    cases = list(dataset.cases[: cfg.data.max_cases or None])
    _warm_page_cache(cases)
    cluster = init_ray(cfg.run)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="preprocess-", dir=cfg.out_dir))
    if cluster["nodes"] > 1:
        raise ConfigError("bench preprocess compares against a loop on this machine: run it on a single-node "
                          f"Ray instance (run.ray_address={cfg.run.ray_address!r} has {cluster['nodes']} nodes)")
    equal_threads = max(1, int(cluster["cpus"]))     # the baseline on as many cores as ours has
    rows: list[dict] = []

    def ours(out: Path) -> None:
        rows[:] = run_cases(cases, dataset.task, out, Progress(len(cases), "case", "ours"), dataset.limits)

    runs = {"baseline_1_thread": _baseline(cases, dataset.task, 1),
            f"baseline_{equal_threads}_threads": _baseline(cases, dataset.task, equal_threads), "ours_warm": ours}
    timings: dict[str, list[float]] = {name: [] for name in runs}
    try:
        log(f"ours (cold workers): Ray Data over {cluster['cpus']:g} CPU, {len(cases)} case(s)")
        cold = _timed(ours, work / "cold")
        for round_ in range(1, cfg.rounds + 1):
            for name, run in runs.items():
                log(f"round {round_}/{cfg.rounds}: {name.replace('_', ' ')}")
                timings[name].append(_timed(run, work / name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    written = sum(r["status"] == "written" for r in rows)
    figures = throughput(timings, len(cases), written, cold, equal_threads)
    summary = {"command": "bench", "target": "preprocess", "dataset": str(dataset.root),
               "cases": len(cases), "cpus": cluster["cpus"], "nodes": cluster["nodes"], "rounds": cfg.rounds,
               **figures,
               "ours_worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in rows),
               "baseline_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "ours_cold_seconds": round(cold, 2),
               **{f"{k}_seconds": [round(t, 2) for t in v] for k, v in timings.items()},
               "rejected": len(cases) - written}
    log(f"bench preprocess: ours {figures['ours_warm_cases_per_s']:.2f} cases/s warm on {equal_threads} CPU; "
        f"baseline {figures[f'baseline_{equal_threads}_threads_cases_per_s']:.2f} cases/s on {equal_threads} "
        f"thread(s), {figures['baseline_1_thread_cases_per_s']:.2f} on 1; ratio {figures['ratio_equal_cores']} "
        f"on equal cores ({figures['ratio_vs_one_thread_baseline']} against the one-thread baseline)")
    write_json(Path(cfg.out_dir) / "preprocess.json", summary)
    return summary
