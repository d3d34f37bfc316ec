"""The local Ray instance our commands start stays itself when other instances share the machine.

Ray Train's placement-group cleaner asks the State API whether its controller lives; a worker that
resolved the State API to another (newer) instance got "no such actor" and a running trial's
workers were removed. Workers of our instance must query their own cluster.
"""
import os
import subprocess
import sys

import pytest
import ray

from swinray.config import RunConfig
from swinray.runtime import init_ray

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
