"""Shared fixtures: the repo root, real data when present, and a private local Ray instance."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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
    ray.shutdown()


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
