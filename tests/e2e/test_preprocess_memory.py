"""Bounded memory relative to the dataset, measured: a dataset that mixes valid cases with every
hostile kind preprocesses like its valid cases alone. It ends ok, keeps every valid case, names
every hostile one with its reason, and its workers' peak memory (measured per case, reported in the
JSON) stays within 1.5x of the run over the valid cases alone, on the same reused Ray workers.

The cases are 64 x 64 x 32, so the absolute limits are scaled down with them (32 megavoxels, 64 MB)
and the honest volumes sit just under those, as a 250-megavoxel one sits under the defaults."""
import gzip
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest

from swinray.config import DataConfig, PreprocessConfig, RunConfig, VolumeLimits
from swinray.data.preprocess import run_preprocess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
MB = 2 ** 20
LIMITS = VolumeLimits(max_megavoxels=32, max_volume_mb=64)


def header(shape, dtype=np.int16, zooms=(1.5, 1.5, 2.0), slope_inter=None) -> bytes:
    """A NIfTI-1 header claiming ``shape`` voxels of ``dtype``, padded to its 352-byte data offset."""
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(dtype)
    h.set_sform(np.diag([*zooms, 1.0]), code=1)
    h.set_data_offset(352)
    if slope_inter:
        h.set_slope_inter(*slope_inter)
    return h.binaryblock + b"\0" * 4


def honest(path, shape, dtype=np.int16, value=0, slope_inter=None) -> None:
    """A .nii.gz of one value that holds exactly what its header claims (well under 1 MB on disk)."""
    chunk = np.full(4 * MB, value, dtype).tobytes()
    remaining = math.prod(shape) * np.dtype(dtype).itemsize
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header(shape, dtype, slope_inter=slope_inter))
        while remaining:
            f.write(chunk[:min(remaining, len(chunk))])
            remaining -= min(remaining, len(chunk))


def ct_case(root, name: str, seed: int, scaled: bool = False) -> dict:
    """A 64 x 64 x 32 CT at 1.5 x 1.5 x 2 mm: a body of soft tissue in air, an organ labelled in it.
    ``scaled``: stored as scanners often do, uint16 of HU + 1024 with scl_inter -1024."""
    rng = np.random.default_rng(seed)
    hu = np.full((64, 64, 32), -1000, np.int16)
    hu[8:-8, 10:-10, 2:-2] = rng.integers(-100, 100, (48, 44, 28))
    label = np.zeros(hu.shape, np.uint8)
    label[20:40, 20:36, 8:24] = 1
    hu[label == 1] += 60
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image = nib.Nifti1Image((hu + 1024).astype(np.uint16) if scaled else hu, affine)
    if scaled:
        image.header.set_slope_inter(1.0, -1024.0)
    for sub, volume in (("imagesTr", image), ("labelsTr", nib.Nifti1Image(label, affine))):
        (root / sub).mkdir(parents=True, exist_ok=True)
        nib.save(volume, root / sub / f"{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def valid_dataset(root) -> list[str]:
    names = ["ct0", "ct1", "ct2", "ct3", "scaled_ct"]
    entries = [ct_case(root, name, seed, scaled=name == "scaled_ct") for seed, name in enumerate(names)]
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background",
                                                                                      "1": "organ"},
                                                   "training": entries}))
    return names


HOSTILE = {   # case -> what its rejection must say
    "claims": "claims.nii.gz: its header claims (1024, 1024, 1024) = 1073.7 megavoxels, above the limit "
              "max_megavoxels=32",
    "bomb": "bomb.nii.gz: the gzip stream holds more than the 65888 bytes its header claims",
    "coarse": "coarse.nii.gz: resampling 12 x 12 x 12 mm voxels to the task's 1.5 x 1.5 x 2 mm would make",
    "zeros": "zeros.nii.gz: its header claims (320, 320, 300) voxels of int16, 234.4 MB to load and resample",
    "float_scaled": "float_scaled.nii.gz: its header claims 74.8 MB of voxel data as loaded (float32, scaled by "
                    "its scl_slope/scl_inter from uint16), above the limit max_volume_mb=64",
    "truncated": "truncated.nii.gz: corrupt or truncated gzip stream",
    "missing": "missing.nii.gz: file not found",
}


def add_hostile_cases(root) -> None:
    images = root / "imagesTr"
    (images / "claims.nii.gz").write_bytes(gzip.compress(header((1024, 1024, 1024), np.uint8)))   # 64 bytes
    with gzip.open(images / "bomb.nii.gz", "wb") as f:       # claims 64 KB, holds 64 MB (64 KB on disk)
        f.write(header((32, 32, 32)))
        for _ in range(64):
            f.write(bytes(MB))
    honest(images / "coarse.nii.gz", (64, 64, 48), value=40)                 # 12 mm voxels, below
    image = nib.load(images / "coarse.nii.gz")
    image.set_sform(np.diag([12.0, 12.0, 12.0, 1.0]), code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.get_sform(), image.header), images / "coarse.nii.gz")
    honest(images / "zeros.nii.gz", (320, 320, 300))                         # 30.7 Mvox, 61 MB: under both
    honest(images / "float_scaled.nii.gz", (280, 280, 250), np.uint16, 1064, (1.0, -1024.0))   # 39 MB stored
    raw = (images / "ct0.nii.gz").read_bytes()
    (images / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] += [{"image": f"./imagesTr/{name}.nii.gz"} for name in HOSTILE]
    (root / "dataset.json").write_text(json.dumps(meta))


def preprocess(root, cache) -> dict:
    cfg = PreprocessConfig(data=DataConfig(source=str(root), cache_dir=str(cache), limits=LIMITS),
                           run=RunConfig(name="preprocess"))
    return run_preprocess(cfg, lambda *_: None)


def test_hostile_cases_cost_no_more_memory_than_the_valid_ones(local_ray, tmp_path):
    valid_names = valid_dataset(tmp_path / "Valid")
    shutil.copytree(tmp_path / "Valid", tmp_path / "Mixed")
    add_hostile_cases(tmp_path / "Mixed")
    alone = preprocess(tmp_path / "Valid", tmp_path / "cache")
    mixed = preprocess(tmp_path / "Mixed", tmp_path / "cache")

    assert alone["ok"] and alone["cases_written"] == len(valid_names) == 5 and alone["cases_rejected"] == 0
    assert mixed["worker_peak_rss_mb"] <= 1.5 * alone["worker_peak_rss_mb"], (alone, mixed)
    assert mixed["ok"] and mixed["worker_peak_rss_scope"] == alone["worker_peak_rss_scope"] == "case"
    kept = json.loads(open(mixed["manifest"]).read())["cases"]
    assert [c["case_id"] for c in kept] == valid_names
    rejected = {r["case_id"]: r["reason"] for r in json.loads(open(mixed["rejected_report"]).read())}
    assert set(rejected) == set(HOSTILE) and mixed["cases_rejected"] == len(HOSTILE)
    for name, expected in HOSTILE.items():
        assert expected in rejected[name], (name, rejected[name])
