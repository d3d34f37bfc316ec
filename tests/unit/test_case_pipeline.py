"""One case through the preprocessing chain, without Ray: geometry, intensities, the cache file."""
import json

import nibabel as nib
import numpy as np
import pytest

from swinray.data.cache import read_case
from swinray.data.case_pipeline import intensity_stats, process_case
from swinray.data.datasets import load_dataset
from swinray.data.phantom import ORGAN_HU, write_phantom_dataset


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, 4, seed=5, shape=(64, 64, 32))   # four different orientations
    return load_dataset(root, task="BTCV")


def world_centroid(mask: np.ndarray, affine) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return (np.asarray(affine) @ np.append(ijk, 1.0))[:3]


@pytest.mark.parametrize("index", range(4))
def test_organs_stay_where_they_are_in_world_space(phantom, tmp_path, index):
    case = phantom.cases[index]
    row = process_case(case, phantom.task, tmp_path)
    assert row["status"] == "written", row.get("reason")
    _, label = read_case(row["path"])
    source = nib.load(case.label)
    source_label = np.asanyarray(source.dataobj)
    for organ in (1, 6, 8):  # spleen, liver, aorta
        before = world_centroid(source_label == organ, source.affine)
        after = world_centroid(label == organ, row["affine"])
        assert np.linalg.norm(before - after) < 2.5, (organ, before, after)   # < one output voxel


def test_output_is_ras_at_the_task_spacing_in_compact_dtypes(phantom, tmp_path):
    row = process_case(phantom.cases[1], phantom.task, tmp_path)
    affine = np.array(row["affine"])
    assert np.allclose(np.abs(np.diag(affine)[:3]), phantom.task.spacing_mm, atol=0.02)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    image, label = read_case(row["path"])
    assert image.dtype == np.float16 and label.dtype == np.uint8
    low, high = phantom.task.window_hu
    liver_hu = low + float(np.median(image[0][label == 6].astype(np.float32))) * (high - low)
    assert ORGAN_HU[6][0] - 30 < liver_hu < ORGAN_HU[6][1] + 30     # blur and noise aside
    meta = json.loads((tmp_path / "cases" / f"{row['case_id']}.json").read_text())
    assert meta["class_voxels"] == np.bincount(label.ravel(), minlength=14).tolist()


def test_an_unexpected_failure_is_a_rejection_not_a_crash(phantom, tmp_path):
    broken = type(phantom.cases[0])("x", ("/dev/null",), None, "training")
    row = process_case(broken, phantom.task, tmp_path)
    assert row["status"] == "rejected" and "/dev/null" in row["reason"]


def test_intensity_statistics_describe_the_foreground_only():
    rng = np.random.default_rng(0)
    image = np.full((1, 64, 64, 64), -1000, np.int16)                  # air everywhere
    body = rng.normal(40, 100, (40, 40, 40)).round().astype(np.int16)  # soft tissue, mean 40 HU
    image[0, 12:52, 12:52, 12:52] = body
    stats = intensity_stats(image, threshold=-500)
    exact = np.percentile(body[body > -500], [0.5, 50, 99.5])
    assert abs(stats["p50"][0] - exact[1]) < 5 and abs(stats["mean"][0] - 40) < 5
    assert abs(stats["p00_5"][0] - exact[0]) < 25 and abs(stats["p99_5"][0] - exact[2]) < 25
    assert abs(stats["std"][0] - 100) < 5                               # no air in the spread
