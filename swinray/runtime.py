"""Connecting to Ray: the cluster a job was submitted to, or a private local instance.

A laptop needs nothing: with no address configured and no ``RAY_ADDRESS`` we start a local
instance. ``ray job submit`` sets ``RAY_ADDRESS`` for the driver, so the same command joins the
cluster it was submitted to.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import sys
import threading
import time
from pathlib import Path

import ray

from swinray import interrupt
from swinray.config import ConfigError, RunConfig


def pin_own_cluster() -> None:
    """Worker setup hook: point the State API at this worker's own cluster.

    Without ``RAY_ADDRESS`` the State API queries the newest Ray instance on the machine. Ray
    Train's placement-group cleaner polls it for its controller; on another instance it finds
    none, decides the controller died and removes the placement group of a run in progress
    (seen: a sweep trial's workers destroyed when a second local instance started)."""
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


_LOCAL_INSTANCE = {"started": False}   # whether init_ray started the instance this process uses
VERBOSE_ENV = "SWINRAY_VERBOSE"         # set by --verbose: Ray's worker logs and INFO lines reach the terminal
_CHATTY_LOGGERS = ("ray.data", "ray.tune", "ray.train")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def token_file() -> Path:
    """Where Ray keeps the cluster token: ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def keep_token_private() -> None:
    """Ray writes the token file (for a new local instance too) readable by every user of the
    machine, and whoever holds the token can run code on the cluster: make it the user's alone."""
    path = token_file()
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)


def use_token_if_present() -> None:
    """Join a token-auth cluster with the token the user has (``~/.ray/auth_token``, as ``ray
    get-auth-token`` saves it, or ``RAY_AUTH_TOKEN[_PATH]``) though ``RAY_AUTH_MODE`` is unset: Ray
    would otherwise send none and be refused."""
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file().is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def init_ray(run: RunConfig) -> dict:
    """Start or join Ray once per process; return where we are connected and what it has."""
    if not ray.is_initialized():
        address = run.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        if address.startswith(("http://", "https://")):
            raise ConfigError(f"Ray address {address} is a dashboard's (the job API): a command joins a cluster "
                              "through `ray job submit --working-dir . -- python -m platform.<verb> ...`, or by "
                              "its GCS address (HOST:6379) in RAY_ADDRESS or run.ray_address")
        if address != "local":
            use_token_if_present()
        kwargs = {}
        if address == "local":  # a joined cluster keeps the runtime env its job was submitted with
            kwargs = {"include_dashboard": run.dashboard, "dashboard_host": "127.0.0.1",
                      "runtime_env": {"worker_process_setup_hook": pin_own_cluster}}
        # Quiet unless --verbose: workers' and actors' own log lines (Train's controller, Tune's trial
        # tables, harmless warnings such as the PreemptionWatcher's) stay in Ray's session logs, and
        # so out of `ray job logs` too; our progress comes from the driver (swinray.progress), and a
        # failure still raises here with its traceback.
        try:
            with interrupt.ours_after():    # ray.init's SIGTERM handler would exit without the JSON line
                ray.init(address=address, log_to_driver=verbose(), **kwargs)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            if address == "local":
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot join the Ray cluster at {address} ({first}); is it running, and does "
                              "~/.ray/auth_token hold its token (RAY_AUTH_MODE=token)?") from None
        keep_token_private()
        if not verbose():
            for name in _CHATTY_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
        _LOCAL_INSTANCE["started"] = address == "local"
    resources = ray.cluster_resources()
    return {
        "ray_address": ray.get_runtime_context().gcs_address,
        "nodes": sum(1 for n in ray.nodes() if n["Alive"]),
        "cpus": resources.get("CPU", 0.0),
        "gpus": resources.get("GPU", 0.0),
    }


# Ray Data's driver-side threads (Ray 2.60): each may still call into Ray's core worker
_RAY_DATA_THREADS = ("StreamingExecutor-", "ray-data-metadata-prefetch", "iter_threaded", "map_tp_")


def shutdown_ray(wait_for_processes: bool = False, grace_s: float = 10.0) -> None:
    """``ray.shutdown()``, once Ray Data's background threads have ended (up to ``grace_s``) and dropped
    object refs are collected: Ray 2.60 destroys the core worker while other threads may still call it,
    and such a call ends the process at once with exit code 1, printing nothing. ``wait_for_processes``:
    return once the raylet, GCS and dashboard of a local instance have exited, before this process starts
    another (an agent that fails takes its raylet, and the driver, with it)."""
    if not ray.is_initialized():
        return
    gc.collect()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(t.name.startswith(_RAY_DATA_THREADS) for t in threading.enumerate()):
        time.sleep(0.05)
    ray.shutdown(wait_for_processes=wait_for_processes)
    _LOCAL_INSTANCE["started"] = False


def shutdown_local_ray() -> bool:
    """Stop the Ray instance init_ray started here (never a joined cluster); whether it did."""
    if ray.is_initialized() and _LOCAL_INSTANCE["started"]:
        shutdown_ray(wait_for_processes=True)   # callers go on, and may start another instance
        return True
    return False


def use_gpu(run: RunConfig) -> bool:
    """GPU is a runtime choice: cuda when asked, or when "auto" and the cluster has GPUs.

    A joined cluster short of GPUs may autoscale (``cluster/gpu.yaml`` starts with none): the GPUs
    are requested from its autoscaler and the run waits for them. A local instance cannot grow."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if run.device == "cuda" and gpus < run.num_workers:
        if _LOCAL_INSTANCE["started"]:
            raise ConfigError(f"run.device=cuda needs {run.num_workers} GPUs for run.num_workers="
                              f"{run.num_workers}, this machine's Ray instance has {gpus:g}; "
                              "set run.device=cpu or auto")
        from ray.autoscaler.sdk import request_resources
        request_resources(bundles=[{"GPU": 1}] * run.num_workers)
        print(f"[swinray] the Ray cluster has {gpus:g} of the {run.num_workers} GPUs this run needs: "
              "asked its autoscaler for them; the run starts when they join", file=sys.stderr, flush=True)
    return run.device == "cuda" or (run.device == "auto" and gpus >= 1)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large buffers for reuse instead of returning them to the kernel.

    A preprocessing worker allocates tens of MB per case; by default each buffer is mapped and
    unmapped, and every case pays for fresh zeroed pages: page faults and memory traffic that
    concurrent workers contend for (20% of a case's time on OpenKBP CTs). Call it in worker
    processes: the heap then stays at the peak RSS the worker reached. False off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
