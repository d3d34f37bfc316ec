"""Connecting to Ray. The local instance our commands start stays itself when other instances
share the machine: Ray Train's placement-group cleaner asks the State API whether its controller
lives, and a worker that resolved the State API to another (newer) instance got "no such actor",
so a running trial's workers were removed. GPUs: a local instance without them is an error, a
joined cluster short of them is asked to autoscale.
"""
import os
import subprocess
import sys
import threading

import pytest
import ray
from ray.cluster_utils import Cluster

from swinray.config import ConfigError, RunConfig
from swinray.runtime import init_ray, shutdown_local_ray, shutdown_ray, use_gpu

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NEWER_INSTANCE = ("import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=True); "
                  "print('up', flush=True); time.sleep(120)")


@ray.remote(num_cpus=0)
class StateProbe:
    def own_state(self) -> str | None:
        from ray.util.state import get_actor
        actor = get_actor(ray.get_runtime_context().get_actor_id(), timeout=20)
        return actor.state if actor else None


def test_a_workers_state_api_finds_its_own_cluster_after_a_newer_instance_started():
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(RunConfig())
    newer = subprocess.Popen([sys.executable, "-c", NEWER_INSTANCE], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert newer.stdout.readline().strip() == "up"
        assert ray.get(StateProbe.remote().own_state.remote(), timeout=60) == "ALIVE"
    finally:
        newer.kill()
        newer.wait()
        ray.shutdown()


def test_cuda_on_a_local_instance_without_gpus_is_a_clear_error():
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(RunConfig(dashboard=False))
    try:
        with pytest.raises(ConfigError, match="run.device=cuda needs 2 GPUs .* has 0; set run.device=cpu or auto"):
            use_gpu(RunConfig(device="cuda", num_workers=2))
        assert shutdown_local_ray() is True and not ray.is_initialized()     # ours to stop
        assert shutdown_local_ray() is False
    finally:
        ray.shutdown()


def test_cuda_on_a_joined_cluster_without_gpus_asks_its_autoscaler_and_goes_on(capfd):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        run = RunConfig(device="cuda", num_workers=2, ray_address=cluster.address)
        assert init_ray(run)["gpus"] == 0
        assert use_gpu(run) is True
        assert "has 0 of the 2 GPUs this run needs: asked its autoscaler" in capfd.readouterr().err
        assert shutdown_local_ray() is False and ray.is_initialized()       # a joined cluster is not ours
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_ray_shuts_down_once_ray_datas_driver_threads_have_ended_or_its_grace_is_over():
    """A thread calling into Ray after ``ray.shutdown()`` destroyed its core worker ends the process
    (exit code 1, no message): Ray Data's driver threads get to finish first, for a bounded time."""
    os.environ.pop("RAY_ADDRESS", None)
    seen, test_over = {}, threading.Event()

    def finishing(after_s: float):
        test_over.wait(after_s)
        seen[after_s] = ray.is_initialized()
    init_ray(RunConfig(dashboard=False))
    try:
        for after_s, name in ((0.3, "StreamingExecutor-test"), (8.0, "iter_threaded")):
            threading.Thread(target=finishing, args=(after_s,), name=name, daemon=True).start()
        shutdown_ray(grace_s=3.0)
        assert seen == {0.3: True} and not ray.is_initialized()     # waited for the one, not for the other
    finally:
        test_over.set()
        ray.shutdown()
