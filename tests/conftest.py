"""Shared fixtures: the repo root, real data when present, and a private local Ray instance."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is not present")
    return path


def write_dicom_series(folder, hu, spacing, origin_ras, series_uid=None, skip=(), name="slice"):
    """(X, Y, Z) HU volume, axis-aligned RAS geometry -> one CT slice file per z (LPS, as DICOM wants),
    stored as the scanners do: value + 1024 with RescaleIntercept -1024. ``skip``: slices left out."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    sx, sy, sz = spacing
    x0, y0, z0 = origin_ras
    for k in range(hu.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{name}{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", "phantom", study, series_uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]          # +i -> -x_LPS, +j -> -y_LPS: RAS axes
        ds.ImagePositionPatient = [-x0, -y0, z0 + k * sz]
        ds.PixelSpacing = [sy, sx]                                  # between rows (j), between columns (i)
        ds.SliceThickness = sz
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[:, :, k].T.astype(np.int32) + 1024).astype(np.int16).tobytes()   # rows = j
        ds.save_as(folder / f"{name}{k:03d}.dcm", enforce_file_format=True)
    return folder


def run_gloo_ranks(fn: Callable, args: tuple, world: int = 2) -> None:
    """``fn(rank, *args)`` in ``world`` processes that may form a gloo group. Forked, not spawned:
    a spawned child imports torch, MONAI and the test module again, 10-40 s a child on 2 cores. A
    forked child computes on one thread: OpenMP's pool, started in this process, does not survive a fork."""
    import torch
    import torch.multiprocessing as mp

    def one_thread(rank, *rest):
        torch.set_num_threads(1)
        fn(rank, *rest)
    mp.start_processes(one_thread, args=args, nprocs=world, join=True, start_method="fork")


def registered_checkpoint_steps(run_dir) -> list[int]:
    """The steps of the checkpoints Ray Train's controller has registered for a run (a checkpoint a
    worker wrote but the controller had not yet taken in is lost if the worker dies)."""
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [r["metrics"]["step"] for r in results if "step" in r.get("metrics", {})]


def train_worker_processes(ray_tmpdir: str) -> list:
    """RayTrainWorker processes of this test's Ray instance (other instances share the machine)."""
    import psutil
    found = []
    for raylet in psutil.process_iter(["cmdline"]):
        cmdline = raylet.info["cmdline"] or []
        if not (cmdline and "raylet" in cmdline[0] and any(ray_tmpdir in c for c in cmdline)):
            continue
        try:
            children = raylet.children(recursive=True)
        except psutil.Error:            # ended meanwhile
            continue
        for child in children:
            try:
                if "RayTrainWorker" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:        # Ray starts and stops workers all the time
                pass
    return found


def run_killing_a_worker(run: Callable[[], dict], ray_tmpdir: str, ready: Callable[[], bool],
                         too_late: Callable[[], bool], timeout_s: float = 400) -> tuple[dict, float]:
    """``run()`` on a thread; as soon as ``ready()``, one of its Ray Train workers is killed (the
    fault a lost process or node causes). ``too_late()`` says the run got past the point the test
    needs (say, its last checkpoint), which fails the test. Returns the run's result and the kill's time."""
    outcome = {}

    def target():
        try:
            outcome["result"] = run()
        except BaseException as e:      # re-raised below, in the test
            outcome["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.time() + timeout_s
    while time.time() < deadline and thread.is_alive() and not ready():
        time.sleep(0.05)
    assert ready() and not too_late(), "the run was not at the point to kill it"
    victims = train_worker_processes(ray_tmpdir)
    assert victims, "no training worker of this test's Ray instance to kill"
    killed_at = time.time()
    victims[-1].kill()
    thread.join(timeout=timeout_s)
    if "error" in outcome:
        raise AssertionError("the run failed after the kill") from outcome["error"]
    assert "result" in outcome, f"the run did not finish within {timeout_s} s of the kill"
    return outcome["result"], killed_at


def aim_hparams(aim_repo) -> dict[str, dict]:
    """Per run (by name), the hyperparameters it logged, read back through Aim's SDK."""
    from aim import Repo, Run
    repo = Repo.from_path(str(aim_repo))
    runs = [Run(h, repo=str(aim_repo), read_only=True) for h in repo.list_all_runs()]
    return {run.name: run["hparams"] for run in runs}


def aim_images(aim_repo, name: str) -> dict[str, dict[int, tuple]]:
    """Per run (by name), the images it logged as ``name``: step -> (width, height, caption),
    read back through Aim's query SDK."""
    from aim import Repo
    out = {}
    for seq in Repo.from_path(str(aim_repo)).query_images(f"images.name == '{name}'", report_mode=0).iter():
        out[seq.run.name] = {step: (*value[0].to_pil_image().size, value[0].caption)
                             for step, value in seq.data.items()}
    return out


def run_module(module: str, *args: str, cwd: Path = REPO, env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repo root, as a user types it."""
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ray_tmpdir():
    """A short private temp dir: Ray's socket paths must stay under 107 characters."""
    path = tempfile.mkdtemp(prefix="sr-ray-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(ray_tmpdir):
    """A private local Ray instance for this test module; never touches other instances."""
    import ray
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_tmpdir,
             log_to_driver=False)
    yield ray
    from swinray.runtime import shutdown_ray
    shutdown_ray(wait_for_processes=True)   # the next module's instance starts on a quiet machine


def patched_header(path: Path, field: str, value) -> Path:
    """A .nii.gz whose header field is set byte for byte: nibabel refuses to save such files."""
    image = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4))
    image.header.set_qform(None, code=0)
    raw = bytearray(image.to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    header[field] = value
    raw[:348] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def write_two_channel_mri(root: Path, cases: int = 3, label_contrast: float = 200.0) -> Path:
    """An MSD-style 2-channel MRI task (Prostate's layout: T2 and ADC, labels pz and tz) of tiny
    cases; channel 0 is ``label_contrast`` brighter inside the label, so a model can learn it."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(cases):
        image = np.zeros((40, 40, 24, 2), np.float32)
        image[4:36, 4:36, 2:22] = rng.normal(500, 50, (32, 32, 20, 2))
        label = np.zeros((40, 40, 24), np.uint8)
        label[14:26, 14:26, 6:18] = 1 + (np.arange(12) >= 6)[None, None, :]
        image[..., 0] += label_contrast * label
        affine = np.diag([0.8, 0.8, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / f"imagesTr/p{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"labelsTr/p{i}.nii.gz")
        entries.append({"image": f"./imagesTr/p{i}.nii.gz", "label": f"./labelsTr/p{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "pz", "2": "tz"},
        "training": entries}))
    return root


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on loopback (moto's server), for the object-storage tests: its URL."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, tmp_path, monkeypatch, request) -> dict:
    """A fresh bucket and the environment a process needs to use it (credentials, endpoint and a
    node-local mirror under tmp_path), also set in this process: ``{"bucket": ..., "env": ...}``."""
    import boto3
    bucket = "swinray-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint, "SWINRAY_STORAGE_MIRROR": str(tmp_path / "mirror")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return {"bucket": bucket, "env": env}


def s3_keys(bucket: str, prefix: str = "") -> list[str]:
    """Every file's key under ``prefix`` in ``bucket`` (not pyarrow's empty "folder/" markers)."""
    import boto3
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/"))


def s3_text(bucket: str, key: str) -> str:
    import boto3
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
