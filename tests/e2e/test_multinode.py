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

from conftest import registered_checkpoint_steps
from swinray.config import PretrainConfig, apply_overrides
from swinray.presets import preset
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


def train_workers_on(node) -> int:
    """How many Ray Train worker processes this node's raylet runs (idle workers it kills meanwhile
    are skipped)."""
    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    count = 0
    for child in raylet.children(recursive=True):
        try:
            count += "RayTrainWorker" in " ".join(child.cmdline() or [])
        except psutil.Error:
            pass
    return count


def test_a_node_lost_mid_run_is_replaced_and_training_resumes_from_the_shared_checkpoint(cluster, tmp_path):
    cluster, workers = cluster
    cfg = apply_overrides(preset(PretrainConfig, "debug"), {
        "run.storage": str(tmp_path / "shared"), "run.name": "multinode", "run.num_workers": 2,
        "run.ray_address": cluster.address, "optim.num_steps": NUM_STEPS,
        "run.checkpoint_every_steps": CHECKPOINT_EVERY})
    cfg = replace(cfg, data=replace(cfg.data, phantom_dir="", cache_dir=""))   # phantom and cache: under run.storage
    run_dir = tmp_path / "shared" / "multinode"
    outcome = {}

    def pretrain():
        try:
            outcome["summary"] = run_pretrain(cfg, lambda *_: None)
        except BaseException as e:        # re-raised below with the test's own assertion
            outcome["error"] = e

    trainer = threading.Thread(target=pretrain)
    trainer.start()

    log = run_dir / "metrics.jsonl"                 # lose a node after the first checkpoint and a step more
    deadline = time.time() + 300
    while time.time() < deadline and trainer.is_alive() and \
            not (log.exists() and len(log.read_text().splitlines()) > CHECKPOINT_EVERY
                 and registered_checkpoint_steps(run_dir)):
        time.sleep(0.2)
    assert "error" not in outcome, f"pretraining failed before the node loss: {outcome['error']!r}"
    assert list(run_dir.glob("checkpoint_*")), "no checkpoint reached the shared storage path"
    assert [train_workers_on(node) for node in workers] == [1, 1]    # one Train worker per node
    lost_at = time.time()
    cluster.remove_node(workers[1], allow_graceful=False)
    cluster.add_node(num_cpus=1)                      # the autoscaler's job on a real cluster

    trainer.join(timeout=500)
    assert not trainer.is_alive(), "pretraining did not finish within 500 s of the node loss"
    if "error" in outcome:
        raise AssertionError("pretraining failed after the node loss") from outcome["error"]
    summary = outcome["summary"]
    rows = [json.loads(line) for line in open(summary["metrics_log"])]
    assert summary["ok"] and summary["steps"] == NUM_STEPS and summary["weights_in_sync"] is True, summary
    # Each step once: the restart dropped the lines of the steps it redid. The steps logged before the
    # node loss are kept up to a checkpoint, and training went on right after it (not from step 1)
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    resumed = next(r["step"] for r in rows if r["time"] > lost_at)
    assert resumed > 1 and (resumed - 1) % CHECKPOINT_EVERY == 0, f"not resumed after a checkpoint: {rows}"
    assert (run_dir / "encoder.pt").exists()
    shared = tmp_path / "shared"                    # what every node reads lives on the shared storage
    assert (shared / "phantom" / "dataset.json").exists() and list((shared / "cache").glob("*/manifest.json"))
