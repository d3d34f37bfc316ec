"""The whole platform on the built-in phantom, one verb after another, as a user would run them.

What runs today: phantom generation, Ray Data preprocessing into the cache, and SSL pretraining
with two Ray Train workers (the debug model: minutes on a laptop CPU). Fine-tuning and sweeps join
this list as they land. ``python -m platform.doctor`` checks a cluster on its own.

    python -m platform.quickstart --preset debug
"""
from __future__ import annotations

from typing import Callable

from swinray.config import QuickstartConfig


def quickstart_steps(preset: str) -> list[tuple[str, list[str]]]:
    """(verb, argv) in order; every verb runs with the same preset."""
    return [
        ("phantom", ["--preset", preset]),
        ("preprocess", ["--preset", preset]),
        ("pretrain", ["--preset", preset]),
    ]


def run_quickstart(cfg: QuickstartConfig, run_verb: Callable[[str, list[str]], dict], log) -> dict:
    results = {}
    for i, (verb, argv) in enumerate(quickstart_steps(cfg.preset), start=1):
        log(f"step {i}: python -m platform.{verb} {' '.join(argv)}")
        results[verb] = summary = run_verb(verb, argv)
        if not summary.get("ok", True):
            log(f"step {i} ({verb}) failed: {summary}")
            return {"command": "quickstart", "ok": False, "failed_step": verb, "steps": results}
    log("done. Outputs: phantom dataset in " + results["phantom"]["out_dir"]
        + ", preprocessed cache in " + results["preprocess"]["cache_dir"]
        + ", pretrained encoder in " + results["pretrain"]["encoder"]
        + f"; compare runs with: aim up --repo {results['pretrain']['aim_repo']} --host 127.0.0.1")
    return {"command": "quickstart", "ok": True, "steps": results}
