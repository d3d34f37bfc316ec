"""Preprocessing with Ray Data on a local Ray instance: cache, bad cases, reruns and resumes."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, patched_header, shared_dataset, write_two_channel_mri
from swinray.config import DataConfig, PreprocessConfig, RunConfig
from swinray.data.cache import read_case
from swinray.data.phantom import write_phantom_dataset
from swinray.data.preprocess import run_preprocess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
SMALL = (64, 64, 32)


def config(source, cache, **data) -> PreprocessConfig:
    return PreprocessConfig(data=DataConfig(source=str(source), cache_dir=str(cache), **data),
                            run=RunConfig(name="preprocess"))


def quiet(*_):
    pass


@pytest.fixture
def phantom(tmp_path):
    write_phantom_dataset(tmp_path / "phantom", 4, seed=1, shape=SMALL)
    return tmp_path / "phantom"


def add_bad_cases(root):
    """One case of every kind of bad input, made for real next to four good phantom cases."""
    meta = json.loads((root / "dataset.json").read_text())
    image0, label0 = (root / meta["training"][0][k] for k in ("image", "label"))
    img = nib.load(image0)
    hu, seg, affine = np.asanyarray(img.dataobj), np.asanyarray(nib.load(label0).dataobj), img.affine
    bad = {}

    def case(name, image=None, label=None, image_path=None):
        ip = image_path or f"./imagesTr/{name}.nii.gz"
        if image is not None:
            nib.save(image, root / ip)
        if label is not None:
            nib.save(label, root / f"labelsTr/{name}.nii.gz")
        bad[name] = {"image": ip, "label": f"./labelsTr/{name}.nii.gz"}

    good_label = nib.Nifti1Image(seg, affine)
    case("missing")
    raw = image0.read_bytes()
    (root / "imagesTr/truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    case("truncated", label=good_label)
    nan = hu.astype(np.float32)
    nan[5, 5, 5] = np.nan
    case("nonfinite", nib.Nifti1Image(nan, affine), good_label)
    case("shape", nib.Nifti1Image(hu, affine), nib.Nifti1Image(seg[:, :, :-2], affine))
    case("affine", nib.Nifti1Image(hu, affine), nib.Nifti1Image(seg, affine @ np.diag([1, 1, 1.5, 1])))
    wrong = seg.copy()
    wrong[0, 0, 0] = 20
    case("labels", nib.Nifti1Image(hu, affine), nib.Nifti1Image(wrong, affine))
    case("fourd", nib.Nifti1Image(np.stack([hu, hu], -1), affine), good_label)
    patched_header(root / "imagesTr/degenerate.nii.gz", "srow_z", [0.0, 0.0, 0.0, 0.0])
    case("degenerate", label=nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)))
    case("air", nib.Nifti1Image(np.full_like(hu, -1000), affine), good_label)
    case("escape", image_path="../outside.nii.gz")
    # Hostile inputs: memory bombs, an impossible spacing, malformed entries, two files with one case id
    (root / "imagesTr/claims.nii.gz").write_bytes(gzip.compress(claimed_header((1024, 1024, 1024), np.uint8)))
    case("claims", label=good_label)
    with gzip.open(root / "imagesTr/bomb.nii.gz", "wb") as f:    # claims 64 KB, holds 8 MB (8 KB on disk)
        f.write(claimed_header((32, 32, 32)) + bytes(8 * 2 ** 20))
    case("bomb", label=good_label)
    case("tiny", nib.Nifti1Image(hu, np.diag([1e-4, 1e-4, 1e-4, 1.0])), good_label)
    case("twin", nib.Nifti1Image(hu, affine), good_label)
    (root / "more").mkdir()
    nib.save(nib.Nifti1Image(hu, affine), root / "more/twin.nii.gz")
    meta["training"] += list(bad.values()) + [{"image": "./more/twin.nii.gz"}, 7, {"image": None},
                                              dict(meta["training"][0])]   # the last: listed twice
    (root / "dataset.json").write_text(json.dumps(meta))
    return bad


def claimed_header(shape, dtype=np.int16) -> bytes:
    """A NIfTI-1 header claiming ``shape`` voxels of ``dtype``, padded to its 352-byte data offset."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([1.5, 1.5, 2.0, 1.0]), code=1)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4


EXPECTED_REASONS = {
    "missing": "missing.nii.gz: file not found",
    "truncated": "truncated.nii.gz: corrupt or truncated gzip stream",
    "nonfinite": "nonfinite.nii.gz: 1 non-finite voxel",
    "shape": "shape.nii.gz: label shape (64, 64, 30) differs from image",
    "affine": "affine.nii.gz: label affine differs from image",
    "labels": "labels.nii.gz: label values [20] are not in the task's label set 0..13",
    "fourd": "fourd.nii.gz: 2 channel(s), the task expects 1",
    "degenerate": "degenerate.nii.gz: degenerate affine",
    "air": "air.nii.gz: empty foreground",
    "escape": "path '../outside.nii.gz' escapes the dataset root",
    "claims": "claims.nii.gz: its header claims (1024, 1024, 1024) = 1073.7 megavoxels, above the limit",
    "bomb": "bomb.nii.gz: the gzip stream holds more than the 65888 bytes its header claims",
    "tiny": "tiny.nii.gz: voxel spacing 0.0001 x 0.0001 x 0.0001 mm is below 0.001 mm",
    "twin": "more/twin.nii.gz would share the case id 'twin'",
    "number": "is 7: expected an object with an 'image' path",
    "null": "'image' must be a path or a list of paths, got None",
}


def test_every_bad_case_is_reported_and_the_good_ones_are_cached(local_ray, phantom, tmp_path):
    add_bad_cases(phantom)
    summary = run_preprocess(config(phantom, tmp_path / "cache"), quiet)
    assert (summary["cases_written"], summary["cases_rejected"]) == (4, len(EXPECTED_REASONS))
    reasons = [r["reason"] for r in json.loads(open(summary["rejected_report"]).read())]
    for name, expected in EXPECTED_REASONS.items():
        assert any(expected in r for r in reasons), f"{name}: {expected!r} not in {reasons}"
    manifest = json.loads(open(summary["manifest"]).read())
    assert [c["case_id"] for c in manifest["cases"]] == [f"phantom_{i:03d}" for i in range(4)]
    for row in manifest["cases"]:
        image, label = read_case(row["path"])
        assert isinstance(image, np.memmap) and image.dtype == np.float16 and label.dtype == np.uint8
        assert image.shape == tuple(row["shape"]) and label.shape == image.shape[1:]
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0   # CT window scaled to [0, 1]
        assert set(np.unique(label)) == set(range(14))                    # all 13 organs survive
        assert sum(row["class_voxels"]) == label.size and len(row["sha256"]) == 2
    fingerprint = json.loads((tmp_path / summary["cache_dir"] / "fingerprint.json").read_text())
    assert fingerprint["num_cases"] == 4 and len(fingerprint["median_source_spacing_mm"]) == 3
    # A rerun with the same rejects redoes none of them, and writes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / summary["cache_dir"]).glob("cases/*")}
    again = run_preprocess(config(phantom, tmp_path / "cache"), quiet)
    assert (again["cases_written"], again["cases_skipped"], again["cases_rejected"]) == (0, 4, len(EXPECTED_REASONS))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_rerun_does_no_work_and_a_changed_setting_gets_a_new_cache(local_ray, phantom, tmp_path):
    first = run_preprocess(config(phantom, tmp_path / "cache"), quiet)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / first["cache_dir"]).glob("cases/*")}
    again = run_preprocess(config(phantom, tmp_path / "cache"), quiet)
    assert (again["cases_written"], again["cases_skipped"]) == (0, 4)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    as_btcv = run_preprocess(config(phantom, tmp_path / "cache", task="BTCV"), quiet)
    assert as_btcv["cache_dir"] != first["cache_dir"] and as_btcv["cases_written"] == 4


def test_changed_source_file_is_redone(local_ray, phantom, tmp_path):
    run_preprocess(config(phantom, tmp_path / "cache"), quiet)
    target = phantom / "imagesTr" / "phantom_002.nii.gz"
    os.utime(target, ns=(time.time_ns(), time.time_ns()))
    again = run_preprocess(config(phantom, tmp_path / "cache"), quiet)
    assert (again["cases_written"], again["cases_skipped"]) == (1, 3)


def test_multichannel_mri_keeps_its_channels(local_ray, tmp_path):
    root = write_two_channel_mri(tmp_path / "Prostateish", cases=2, label_contrast=0.0)
    summary = run_preprocess(config(root, tmp_path / "cache"), quiet)
    assert summary["cases_written"] == 2
    row = json.loads(open(summary["manifest"]).read())["cases"][0]
    image, label = read_case(row["path"])
    assert image.shape[0] == 2 and set(np.unique(label)) == {0, 1, 2}
    inside = image[:, label > 0].astype(np.float32)                       # z-scored per channel
    assert abs(float(inside.mean())) < 0.5 and 0.5 < float(inside.std()) < 1.5


def test_real_hippocampus_mri(local_ray, tmp_path):
    summary = run_preprocess(config(shared_dataset("Task04_Hippocampus"), tmp_path, max_cases=12), quiet)
    assert summary["task"] == "Task04_Hippocampus" and summary["cases_written"] == 12
    for row in json.loads(open(summary["manifest"]).read())["cases"]:
        image, label = read_case(row["path"])
        assert set(np.unique(label)) <= {0, 1, 2} and image.shape[1:] == label.shape


def test_real_unlabelled_head_and_neck_ct_uses_the_paper_settings(local_ray, tmp_path):
    source = shared_dataset("OpenKBP_HN_CT") / "imagesTr"
    summary = run_preprocess(config(source, tmp_path, max_cases=4), quiet)
    assert summary["cases_written"] == 4
    row = json.loads(open(summary["manifest"]).read())["cases"][0]
    assert row["spacing_mm"] == [1.5, 1.5, 2.0] and row["label"] is None
    image, label = read_case(row["path"])
    assert label is None and image.dtype == np.float16


def test_two_unlabelled_collections_make_one_pretraining_cache_that_keeps_each_cases_collection(
        local_ray, phantom, tmp_path):
    for i, collection in enumerate(("TCIA-A", "TCIA-B")):           # the same file names in both
        (tmp_path / collection).mkdir()
        for name in ("phantom_000.nii.gz", "phantom_001.nii.gz"):
            shutil.copy(phantom / "imagesTr" / name, tmp_path / collection / name)
    cfg = PreprocessConfig(data=DataConfig(unlabelled=(str(tmp_path / "TCIA-A"), str(tmp_path / "TCIA-B")),
                                           cache_dir=str(tmp_path / "cache")), run=RunConfig(name="preprocess"))
    summary = run_preprocess(cfg, quiet)
    rows = json.loads(open(summary["manifest"]).read())["cases"]
    assert summary["cases_written"] == 4 and summary["cases_rejected"] == 0
    assert [(r["case_id"], r["collection"]) for r in rows] == [
        ("TCIA-A-phantom_000", "TCIA-A"), ("TCIA-A-phantom_001", "TCIA-A"),
        ("TCIA-B-phantom_000", "TCIA-B"), ("TCIA-B-phantom_001", "TCIA-B")]
    assert all(r["label"] is None and r["spacing_mm"] == [1.5, 1.5, 2.0] for r in rows)
    assert run_preprocess(cfg, quiet)["cases_written"] == 0                  # a rerun does no work


def _kill_tree(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver's process group and any Ray process of its private instance."""
    import psutil
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for p in psutil.process_iter(["cmdline"]):
        if any(ray_tmp in part for part in (p.info["cmdline"] or [])):
            p.kill()


def test_killed_run_resumes_without_redoing_finished_cases(tmp_path):
    write_phantom_dataset(tmp_path / "data", 24, seed=3)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "platform.preprocess", "--data", str(tmp_path / "data"),
           "--set", f"data.cache_dir={cache}", "--set", f"run.storage={tmp_path / 'runs'}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp = tempfile.mkdtemp(prefix="sr-kill-")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(cache.glob("*/cases/*.json"))) < 6:
            time.sleep(0.05)
    finally:
        _kill_tree(proc, ray_tmp)
    done_before = {p: p.stat().st_mtime_ns for p in cache.glob("*/cases/*.json")}
    assert 6 <= len(done_before) < 24, "the kill must land halfway"
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="sr-kill2-")
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["cases_written"] + summary["cases_skipped"] == 24
    assert summary["cases_skipped"] >= len(done_before)
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before   # not redone
    for row in json.loads(open(summary["manifest"]).read())["cases"]:
        read_case(row["path"], mmap=False)                                   # every file whole
