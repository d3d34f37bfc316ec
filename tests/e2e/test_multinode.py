"""Pretraining across nodes: a head and two 1-CPU worker nodes (``ray.cluster_utils.Cluster``), one
Ray Train worker per node, checkpoints in the shared storage path; a worker node is removed
mid-run, a replacement joins, and the run resumes from its latest checkpoint with ranks in sync."""
import json
import os
import threading
import time
from dataclasses import replace

import psutil
import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from swinray.config import DataConfig, PretrainConfig, apply_overrides, preset
from swinray.train.pretrain import run_pretrain

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
NUM_STEPS, CHECKPOINT_EVERY = 8, 3


@pytest.fixture
def cluster():
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def train_workers_on(node) -> list[psutil.Process]:
    """The Ray Train worker processes this node's raylet started."""
    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    return [p for p in raylet.children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline() or [])]


def test_a_node_lost_mid_run_is_replaced_and_training_resumes_from_the_shared_checkpoint(cluster, tmp_path):
    cluster, workers = cluster
    cfg = apply_overrides(preset(PretrainConfig, "debug"), {
        "run.storage": str(tmp_path / "shared"), "run.name": "multinode", "run.num_workers": 2,
        "run.ray_address": cluster.address, "optim.num_steps": NUM_STEPS,
        "run.checkpoint_every_steps": CHECKPOINT_EVERY})
    cfg = replace(cfg, data=DataConfig(phantom_dir=str(tmp_path / "phantom"), num_phantom_cases=4,
                                       cache_dir=str(tmp_path / "shared" / "cache")))
    run_dir = tmp_path / "shared" / "multinode"
    outcome = {}
    trainer = threading.Thread(target=lambda: outcome.update(summary=run_pretrain(cfg, lambda *_: None)))
    trainer.start()

    log = run_dir / "metrics.jsonl"                 # lose a node after the first checkpoint and a step more
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) > CHECKPOINT_EVERY):
        time.sleep(0.2)
    assert list(run_dir.glob("checkpoint_*")), "no checkpoint reached the shared storage path"
    assert [len(train_workers_on(node)) for node in workers] == [1, 1]    # one Train worker per node
    cluster.remove_node(workers[1], allow_graceful=False)
    cluster.add_node(num_cpus=1)                      # the autoscaler's job on a real cluster

    trainer.join(timeout=500)
    summary = outcome["summary"]
    assert summary["ok"] and summary["steps"] == NUM_STEPS and summary["weights_in_sync"] is True
    steps = [json.loads(line)["step"] for line in open(summary["metrics_log"])]
    assert steps[-1] == NUM_STEPS
    (restart,) = [now for before, now in zip(steps, steps[1:]) if now <= before]   # one restart...
    assert restart > 1 and (restart - 1) % CHECKPOINT_EVERY == 0                     # ...from a checkpoint
    assert (run_dir / "encoder.pt").exists()
