"""`platform.convert btcv`: the challenge's RawData layout becomes the reference dataset_0.json
layout, with the reference split (validation = cases 35-40), which our BTCV task then reads."""
import json
import shutil

import pytest

from conftest import run_module
from swinray.data.datasets import load_dataset
from swinray.data.phantom import write_phantom_dataset

NUMBERS = ("0001", "0002", "0035")          # two training cases and one reference validation case


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    """Phantom cases written as BTCV distributes them, plus an image whose label is missing."""
    tmp = tmp_path_factory.mktemp("btcv")
    write_phantom_dataset(tmp / "phantom", num_cases=3, shape=(48, 48, 16))
    raw = tmp / "RawData"
    for sub in ("Training/img", "Training/label", "Testing/img"):
        (raw / sub).mkdir(parents=True)
    for i, number in enumerate(NUMBERS):
        name = f"phantom_{i:03d}.nii.gz"
        shutil.copy(tmp / "phantom" / "imagesTr" / name, raw / "Training/img" / f"img{number}.nii.gz")
        shutil.copy(tmp / "phantom" / "labelsTr" / name, raw / "Training/label" / f"label{number}.nii.gz")
    shutil.copy(raw / "Training/img/img0001.nii.gz", raw / "Training/img/img0003.nii.gz")      # no label
    shutil.copy(raw / "Training/img/img0001.nii.gz", raw / "Testing/img/img0061.nii.gz")
    return raw


def test_btcv_rawdata_becomes_the_reference_layout_with_its_split(raw_data, tmp_path):
    out = run_module("platform.convert", "btcv", "--src", str(raw_data), "--out", str(tmp_path / "BTCV"))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["training"], summary["validation"], summary["test"]) == (2, 1, 1)
    assert summary["left_out"] == [str(raw_data / "Training/img/img0003.nii.gz")]
    assert "img0003.nii.gz has no label0003" in out.stderr                      # said, not silently dropped
    dataset = load_dataset(tmp_path / "BTCV", task="BTCV")
    assert dataset.dataset_file.name == "dataset_0.json"
    assert [c.case_id for c in dataset.split("training")] == ["img0001", "img0002"]
    assert [c.case_id for c in dataset.split("validation")] == ["img0035"]
    assert all(c.label and c.label.endswith(f"label{c.case_id[3:]}.nii.gz") for c in dataset.cases if c.split != "test")
    assert (tmp_path / "BTCV" / "imagesTr" / "img0035.nii.gz").read_bytes() == \
        (raw_data / "Training/img/img0035.nii.gz").read_bytes()


def test_a_folder_that_is_not_btcv_rawdata_is_refused_clearly(tmp_path):
    out = run_module("platform.convert", "btcv", "--src", str(tmp_path), "--out", str(tmp_path / "out"))
    assert out.returncode != 0 and "--src must be BTCV's RawData folder" in out.stderr
