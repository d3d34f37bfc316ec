"""Object storage: a node-local mirror of s3:// whose files are uploaded whole and fetched on first use.

Against a real S3 API on loopback (moto's server); "another node" is a second mirror folder."""
import gzip
import json

import numpy as np
import pytest

from conftest import s3_keys
from swinray.config import ConfigError, DataConfig
from swinray.data.cache import cached_row, read_case, source_stamp, write_case
from swinray.data.cases import Case
from swinray.data.source import load_source
from swinray.resolve import aim_repo_for
from swinray.storage import (
    checkpoint_location,
    exists,
    fetch,
    fetch_named,
    local_path,
    ray_storage_path,
    read_remote_bytes,
    remote_of,
    shown,
    upload,
)
from swinray.tracking import Tracker


def as_another_node(monkeypatch, tmp_path):
    monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / "other-node"))


def test_a_uri_maps_to_one_mirror_path_and_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / "m"))
    mirror = local_path("s3://lab/ssl/")
    assert mirror == tmp_path / "m" / "s3" / "lab" / "ssl"
    assert remote_of(mirror / "run" / "encoder.pt") == "s3://lab/ssl/run/encoder.pt"
    assert shown(mirror / "run") == "s3://lab/ssl/run" and shown(tmp_path / "x") == str(tmp_path / "x")
    assert remote_of(tmp_path / "elsewhere") is None and remote_of(tmp_path / "m" / "s3") is None
    assert ray_storage_path(mirror / "trials") == "s3://lab/ssl/trials"      # Ray writes the object store
    assert ray_storage_path("s3://lab/ssl") == "s3://lab/ssl"
    monkeypatch.chdir(tmp_path)
    assert ray_storage_path("outputs") == str(tmp_path / "outputs")
    assert checkpoint_location("lab/ssl/t1/checkpoint_0", "s3://lab/ssl/trials") == "s3://lab/ssl/t1/checkpoint_0"
    assert checkpoint_location("/out/t1/checkpoint_0", "/out/trials") == "/out/t1/checkpoint_0"


def test_an_uploaded_file_and_folder_reach_another_nodes_mirror(s3_bucket, tmp_path, monkeypatch):
    root = local_path(f"s3://{s3_bucket['bucket']}/runs")
    (root / "run" / "trials" / "a").mkdir(parents=True)
    (root / "run" / "trials" / "a" / "aim_run.hash").write_text("abc")
    (root / "run" / "config.json").write_text("{}")
    upload(root / "run" / "config.json")
    upload(root / "run" / "trials")
    assert s3_keys(s3_bucket["bucket"]) == ["runs/run/config.json", "runs/run/trials/a/aim_run.hash"]

    as_another_node(monkeypatch, tmp_path)
    there = local_path(f"s3://{s3_bucket['bucket']}/runs")
    assert not (there / "run" / "config.json").exists() and exists(there / "run" / "config.json")
    assert fetch(there / "run" / "config.json") and (there / "run" / "config.json").read_text() == "{}"
    assert [p.read_text() for p in fetch_named(there / "run" / "trials", "aim_run.hash")] == ["abc"]
    assert not fetch(there / "run" / "missing.json") and not exists(there / "run" / "missing.json")
    assert read_remote_bytes(there / "run" / "config.json") == b"{}"
    assert read_remote_bytes(there / "run" / "config.json", offset=1) == b"}"
    assert not list(there.rglob("*.part"))                         # downloads land under their own name


def test_a_gzipped_file_travels_byte_for_byte(s3_bucket, tmp_path, monkeypatch):
    """pyarrow would gunzip a .gz on the way down (and gzip on the way up) unless told not to."""
    nifti = local_path(f"s3://{s3_bucket['bucket']}/data") / "ct.nii.gz"
    nifti.parent.mkdir(parents=True)
    payload = gzip.compress(b"NIfTI bytes" * 100)
    nifti.write_bytes(payload)
    upload(nifti)
    as_another_node(monkeypatch, tmp_path)
    there = local_path(f"s3://{s3_bucket['bucket']}/data") / "ct.nii.gz"
    assert fetch(there) and there.read_bytes() == payload


def test_a_cached_case_written_on_one_node_is_found_and_read_on_another(s3_bucket, tmp_path, monkeypatch):
    source = local_path(f"s3://{s3_bucket['bucket']}/data") / "ct.nii.gz"     # a dataset in the bucket too
    source.parent.mkdir(parents=True)
    source.write_bytes(b"not read here")
    upload(source)
    case = Case("c1", (str(source),), None, "training")
    cache = local_path(f"s3://{s3_bucket['bucket']}/cache") / "Task-abc"
    image = np.arange(2 * 4 * 4 * 4, dtype=np.float16).reshape(2, 4, 4, 4)
    label = (np.arange(64, dtype=np.uint8) % 3).reshape(4, 4, 4)
    write_case(cache, "c1", image, label, {"case_id": "c1", "path": str(cache / "cases" / "c1.npy"),
                                           "source_stamp": source_stamp(case)})
    assert s3_keys(s3_bucket["bucket"], "cache/") == ["cache/Task-abc/cases/c1.json", "cache/Task-abc/cases/c1.npy"]

    stamp = source_stamp(case)
    as_another_node(monkeypatch, tmp_path)
    there = local_path(f"s3://{s3_bucket['bucket']}/cache") / "Task-abc"
    moved = Case("c1", (str(local_path(f"s3://{s3_bucket['bucket']}/data") / "ct.nii.gz"),), None, "training")
    assert source_stamp(moved) == stamp == [[f"s3://{s3_bucket['bucket']}/data/ct.nii.gz", 13, None]]
    row = cached_row(there, moved)
    assert row is not None and row["path"] == str(there / "cases" / "c1.npy")   # this node's copy
    got_image, got_label = read_case(row["path"])
    assert np.array_equal(got_image, image) and np.array_equal(got_label, label)


def test_a_metrics_log_resumed_on_another_node_keeps_its_earlier_lines(s3_bucket, tmp_path, monkeypatch):
    log = local_path(f"s3://{s3_bucket['bucket']}/runs") / "r" / "metrics.jsonl"
    first = Tracker(log.parent)
    first.log({"loss": 1.0}, 1)
    first.log({"loss": 0.9}, 2)                     # within the upload interval: not uploaded yet
    assert [json.loads(line)["step"] for line in read_remote_bytes(log).splitlines()] == [1]
    first.checkpointed()                            # a checkpoint: the log in S3 reaches it
    assert [json.loads(line)["step"] for line in read_remote_bytes(log).splitlines()] == [1, 2]
    first.log({"loss": 0.85}, 3)
    first.close()
    as_another_node(monkeypatch, tmp_path)
    there = local_path(f"s3://{s3_bucket['bucket']}/runs") / "r" / "metrics.jsonl"
    second = Tracker(there.parent)
    second.log({"loss": 0.8}, 4)
    second.close()
    assert [json.loads(line)["step"] for line in read_remote_bytes(there).splitlines()] == [1, 2, 3, 4]


def test_a_dataset_is_read_from_a_path_not_a_bucket():
    with pytest.raises(ConfigError, match="s3://lab/ct: datasets are read from a path.*mount the bucket"):
        load_source(DataConfig(source="s3://lab/ct"))


def test_aim_cannot_default_into_object_storage(monkeypatch, tmp_path):
    monkeypatch.delenv("SWINRAY_AIM_REPO", raising=False)
    with pytest.raises(ConfigError, match="s3://lab/runs: Aim cannot write to object storage.*a folder"):
        aim_repo_for("", "s3://lab/runs")
    assert aim_repo_for(str(tmp_path / "aim"), "s3://lab/runs") == str(tmp_path / "aim")
    monkeypatch.setenv("SWINRAY_AIM_REPO", str(tmp_path / "head-aim"))     # a cluster's head names its repo
    assert aim_repo_for("", "s3://lab/runs") == str(tmp_path / "head-aim")
