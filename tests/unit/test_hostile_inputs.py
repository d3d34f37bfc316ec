"""Hostile inputs: each is refused with a reason that names it, costs no more memory than a normal
case, and never takes the valid cases down with it. Every file here is small and generated: headers
are crafted with nibabel and written byte for byte, the gzip bomb is compressed as a stream."""
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile_files import MB, TASK, header_bytes, msd, peak_mb, write_case, write_dataset

from swinray.data.case_pipeline import process_case
from swinray.data.cases import Case
from swinray.data.datasets import load_dataset
from swinray.data.nifti import CaseError, read_verified
from swinray.errors import DatasetError

# --------------------------------------------------------------------------------------------
# Bounded memory
# --------------------------------------------------------------------------------------------

def test_a_64_byte_file_claiming_a_gibibyte_is_refused_before_anything_is_allocated(tmp_path):
    path = tmp_path / "claims_1gib.nii.gz"
    path.write_bytes(gzip.compress(header_bytes((1024, 1024, 1024), np.uint8)))
    assert path.stat().st_size < 100
    error, peak = peak_mb(lambda: read_verified(path))
    assert isinstance(error, CaseError)
    assert "claims_1gib.nii.gz: its header claims (1024, 1024, 1024) = 1073.7 megavoxels, above the limit " \
           "max_megavoxels=256" in str(error)
    assert peak < 8


def test_a_header_claiming_more_bytes_than_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / "float64.nii.gz"
    path.write_bytes(gzip.compress(header_bytes((1000, 1000, 200), np.float64)))    # 200 Mvox, 1526 MB
    error, peak = peak_mb(lambda: read_verified(path))
    assert isinstance(error, CaseError)
    assert "float64.nii.gz: its header claims 1525.9 MB of voxel data, above the limit max_volume_mb=1024" in str(error)
    assert peak < 8


def test_a_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    """A header claiming 64^3 int16 voxels (512 KB) in a gzip stream of 64 MB of zeros (64 KB on
    disk, less than the claim): at most the claim is decompressed."""
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header_bytes((64, 64, 64)))
        zeros = bytes(MB)
        for _ in range(64):
            f.write(zeros)
    assert path.stat().st_size < 100_000
    error, peak = peak_mb(lambda: read_verified(path))
    assert isinstance(error, CaseError)
    assert "bomb.nii.gz: the gzip stream holds more than the 524640 bytes its header claims" in str(error)
    assert peak < 8


def test_a_file_far_larger_than_its_header_claims_is_refused_unread(tmp_path):
    path = tmp_path / "padded.nii"
    path.write_bytes(header_bytes((8, 8, 8)) + bytes(4 * MB))
    error, peak = peak_mb(lambda: read_verified(path))
    assert isinstance(error, CaseError)
    assert f"padded.nii: {4 * MB + 352} bytes on disk for the 1376 its header claims" in str(error)
    assert peak < 2


def test_a_12_mm_header_is_refused_before_resampling_blows_it_up(tmp_path):
    """64 x 64 x 48 voxels that claim 12 mm: to the task's 1.5 x 1.5 x 2 mm that is 75 megavoxels, 384x."""
    root = tmp_path / "ds"
    write_case(root, "coarse", shape=(64, 64, 48), zooms=(12.0, 12.0, 12.0), label=False)
    case = Case("coarse", (str(root / "imagesTr" / "coarse.nii.gz"),), None, "training")
    assert Path(case.image[0]).stat().st_size < 50_000
    row = process_case(case, TASK, tmp_path / "cache")
    assert row["status"] == "rejected"
    assert "coarse.nii.gz: resampling 12 x 12 x 12 mm voxels to the task's 1.5 x 1.5 x 2 mm would make " \
           "[512, 512, 288] = 75.5 megavoxels (384x the source), above the limits" in row["reason"]
    assert "max_resample_growth=27" in row["reason"]
    assert not (tmp_path / "cache" / "cases" / "coarse.npy").exists()


def test_a_spacing_of_a_tenth_of_a_micrometre_is_named_as_a_spacing(tmp_path):
    path = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.diag([1e-4, 1e-4, 1e-4, 1.0])), path)
    with pytest.raises(CaseError) as caught:
        read_verified(path)
    assert "tiny.nii.gz: voxel spacing 0.0001 x 0.0001 x 0.0001 mm is below 0.001 mm" in str(caught.value)
    assert "degenerate" not in str(caught.value)


def test_a_dicom_series_is_sized_from_its_headers_before_its_pixels_are_read(tmp_path, monkeypatch):
    from monai.data import PydicomReader

    from conftest import write_dicom_series
    from swinray.config import VolumeLimits
    series = write_dicom_series(tmp_path / "series", np.zeros((32, 24, 6), np.int16), (1.0, 1.0, 2.0), (0, 0, 0))
    monkeypatch.setattr(PydicomReader, "read", lambda *a, **k: pytest.fail("pixels read before the size check"))
    with pytest.raises(CaseError) as caught:
        read_verified(series, VolumeLimits(max_megavoxels=0.001))
    assert "series: its header claims (24, 32, 6)" in str(caught.value) and "max_megavoxels=0.001" in str(caught.value)


def test_limits_are_settings_and_apply_to_evaluate_and_predict():
    from swinray.config import DataConfig, EvaluateConfig, PredictConfig, VolumeLimits
    from swinray.errors import ConfigError
    assert DataConfig().limits == EvaluateConfig().limits == PredictConfig().limits == VolumeLimits()
    with pytest.raises(ConfigError, match="max_megavoxels"):
        VolumeLimits(max_megavoxels=float("nan"))


def test_a_mixed_dataset_keeps_every_valid_case_and_names_every_hostile_one(tmp_path):
    """Valid cases (one with a foreground of a single voxel) among every hostile kind, through the
    preprocessing of one case at a time (what each Ray task runs)."""
    root = tmp_path / "Mixed"
    entries = [write_case(root, "valid0"), write_case(root, "valid1")]
    sparse = np.full((24, 24, 12), -1000, np.int16)
    sparse[5, 7, 3] = 40                                    # one body voxel, missed by a strided sample
    nib.save(nib.Nifti1Image(sparse, np.diag([1.5, 1.5, 2.0, 1.0])), root / "imagesTr" / "sparse.nii.gz")
    entries.append({"image": "./imagesTr/sparse.nii.gz"})
    (root / "imagesTr" / "claims.nii.gz").write_bytes(gzip.compress(header_bytes((2048, 2048, 512), np.uint8)))
    with gzip.open(root / "imagesTr" / "bomb.nii.gz", "wb") as f:
        f.write(header_bytes((32, 32, 32)) + bytes(8 * MB))
    write_case(root, "coarse", shape=(64, 64, 48), zooms=(12.0, 12.0, 12.0), label=False)
    entries += [{"image": f"./imagesTr/{n}.nii.gz"} for n in ("claims", "bomb", "coarse")]
    write_dataset(root, msd(entries))
    dataset = load_dataset(root, log=lambda m: None)
    rows = {c.case_id: process_case(c, dataset.task, tmp_path / "cache") for c in dataset.cases}
    assert {k for k, r in rows.items() if r["status"] == "written"} == {"valid0", "valid1", "sparse"}
    assert "max_megavoxels=256" in rows["claims"]["reason"]
    assert "holds more than the" in rows["bomb"]["reason"]
    assert "max_resample_growth" in rows["coarse"]["reason"]


# --------------------------------------------------------------------------------------------
# No whole-run stops: task inference and dataset files
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "missing", "claims_1gib"])
def test_task_inference_skips_an_unreadable_first_volume_naming_it(tmp_path, damage):
    """No ``modality``: the first volume decides CT or MRI. Broken, it is named and the next one used."""
    root = tmp_path / "NoModality"
    entries = [write_case(root, name) for name in ("a_first", "b_valid", "c_valid")]
    first = root / "imagesTr" / "a_first.nii.gz"
    if damage == "truncated":
        first.write_bytes(first.read_bytes()[:200])
    elif damage == "missing":
        first.unlink()
    else:
        first.write_bytes(gzip.compress(header_bytes((1024, 1024, 1024), np.uint8)))
    write_dataset(root, {"labels": {"0": "background", "1": "organ"}, "training": entries})
    said = []
    dataset = load_dataset(root, log=said.append)
    assert dataset.task.modality == "CT" and dataset.task.spacing_mm == (1.5, 1.5, 2.0)
    assert [c.case_id for c in dataset.cases] == ["a_first", "b_valid", "c_valid"]   # preprocessing rejects it
    assert any(m.startswith("task inference: skipped ") and "a_first.nii.gz" in m for m in said)


def test_an_unlabelled_folder_whose_first_volume_is_truncated_still_loads(tmp_path):
    folder = tmp_path / "corpus"
    for name in ("a", "b"):
        write_case(folder, name, label=False)
    images = folder / "imagesTr"
    (images / "a.nii.gz").write_bytes((images / "a.nii.gz").read_bytes()[:100])
    said = []
    dataset = load_dataset(images, log=said.append)
    assert dataset.task.modality == "CT" and {c.case_id for c in dataset.cases} == {"a", "b"}
    assert any("a.nii.gz" in m and "corrupt or truncated gzip stream" in m for m in said)


BAD_ENTRIES = [
    (7, "entry 1 of 'training' is 7: expected an object with an 'image' path"),
    ({"image": 5, "label": "./labelsTr/valid0.nii.gz"}, "entry 1 of 'training': 'image' must be a path or a list "
                                                        "of paths, got 5"),
    ({"image": None}, "entry 1 of 'training': 'image' must be a path or a list of paths, got None"),
    ({"label": "./labelsTr/valid0.nii.gz"}, "entry 1 of 'training' has no 'image'"),
    ({"image": "./imagesTr/valid1.nii.gz", "label": ["a", "b"]},
     "entry 1 of 'training': 'label' must be a path (or null), got ['a', 'b']"),
]


@pytest.mark.parametrize("bad, reason", BAD_ENTRIES, ids=["number", "image_number", "image_null", "no_image",
                                                          "label_list"])
def test_a_malformed_entry_is_rejected_and_the_others_go_on(tmp_path, bad, reason):
    root = tmp_path / "Entries"
    good = [write_case(root, "valid0"), write_case(root, "valid2")]
    write_case(root, "valid1")
    write_dataset(root, msd([good[0], bad, good[1]]))
    dataset = load_dataset(root, log=lambda m: None)
    assert [c.case_id for c in dataset.cases] == ["valid0", "valid2"]
    assert len(dataset.rejected) == 1 and reason in dataset.rejected[0]
    assert str(root / "dataset.json") in dataset.rejected[0]


def test_a_training_list_of_numbers_rejects_every_entry_with_one_clear_error(tmp_path):
    root = write_dataset(tmp_path / "Numbers", msd([1, 2]))
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert "no usable case" in str(caught.value) and "entry 0 of 'training' is 1" in str(caught.value)
    assert "entry 1 of 'training' is 2" in str(caught.value)


@pytest.mark.parametrize("meta, reason", [
    ([{"image": "./imagesTr/valid0.nii.gz"}], "a dataset file is a JSON object with training, validation, test "
                                              "lists of cases; this one is a JSON list"),
    ("LABELS_AS_LIST", "'labels' must map label values to names"),
    ("MODALITY_AS_STRING", "'modality' must map channel numbers to names"),
], ids=["top_level_list", "labels_list", "modality_string"])
def test_a_file_that_cannot_be_a_dataset_is_one_line_and_ok_false(tmp_path, capfd, meta, reason):
    from swinray.cli import main
    root = tmp_path / "Unusable"
    entry = write_case(root, "valid0")
    if meta == "LABELS_AS_LIST":
        meta = {**msd([entry]), "labels": ["background", "organ"]}
    elif meta == "MODALITY_AS_STRING":
        meta = {**msd([entry]), "modality": "CT"}
    write_dataset(root, meta)
    code = main("preprocess", ["--data", str(root), "--print-config", "--set", f"run.storage={tmp_path / 'out'}"])
    out, err = capfd.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and summary["ok"] is False and reason in summary["error"]
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in err


def test_rgb_and_complex_voxels_are_refused_by_name_and_task_inference_goes_on(tmp_path):
    root = tmp_path / "OddTypes"
    write_case(root, "odd")
    rgb = np.zeros((24, 24, 12), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for sub in ("imagesTr", "labelsTr"):
        nib.save(nib.Nifti1Image(rgb, np.diag([1.5, 1.5, 2.0, 1.0])), root / sub / "odd.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 12), np.complex64), np.diag([1.5, 1.5, 2.0, 1.0])),
             root / "imagesTr" / "wave.nii.gz")
    entries = [{"image": "./imagesTr/odd.nii.gz", "label": "./labelsTr/odd.nii.gz"}, write_case(root, "valid0"),
               {"image": "./imagesTr/wave.nii.gz"}]
    write_dataset(root, msd(entries))
    said = []
    dataset = load_dataset(root, log=said.append)
    assert any("odd.nii.gz: voxels of type" in m for m in said)
    rows = {c.case_id: process_case(c, dataset.task, tmp_path / "cache") for c in dataset.cases}
    assert rows["valid0"]["status"] == "written"
    assert "odd.nii.gz: voxels of type [('R', 'u1'), ('G', 'u1'), ('B', 'u1')] (complex or RGB)" \
        in rows["odd"]["reason"]
    assert "wave.nii.gz: voxels of type complex64" in rows["wave"]["reason"]


def test_a_symlink_loop_and_a_dangling_link_in_a_folder_cost_only_themselves(tmp_path):
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "loop.nii.gz").symlink_to("loop.nii.gz")
    (folder / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    image = np.full((24, 24, 12), -1000, np.int16)
    image[4:-4, 4:-4, 2:-2] = 40
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.5, 2.0, 1.0])), folder / "valid.nii.gz")
    said = []
    dataset = load_dataset(folder, log=said.append)
    assert any("loop.nii.gz: cannot read" in m for m in said)
    rows = {c.case_id: process_case(c, dataset.task, tmp_path / "cache") for c in dataset.cases}
    assert rows["valid"]["status"] == "written"
    assert rows["loop"]["status"] == rows["gone"]["status"] == "rejected"
    assert "loop.nii.gz" in rows["loop"]["reason"] and "nowhere.nii.gz: file not found" in rows["gone"]["reason"]


def test_a_deeply_nested_dataset_file_is_one_clear_error(tmp_path):
    root = tmp_path / "Nested"
    root.mkdir()
    (root / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match=r"dataset\.json: cannot read the dataset file \(RecursionError"):
        load_dataset(root)


# --------------------------------------------------------------------------------------------
# Unique case ids
# --------------------------------------------------------------------------------------------

def test_the_same_file_name_in_two_folders_is_refused_naming_both(tmp_path):
    root = tmp_path / "TwoFolders"
    entries = [write_case(root, "scan"), write_case(root, "other")]
    write_case(root / "more", "scan")
    entries.append({"image": "./more/imagesTr/scan.nii.gz", "label": "./more/labelsTr/scan.nii.gz"})
    write_dataset(root, msd(entries))
    dataset = load_dataset(root, log=lambda m: None)
    assert [c.case_id for c in dataset.cases] == ["other"]
    (reason,) = dataset.rejected
    assert f"{root}/imagesTr/scan.nii.gz (label {root}/labelsTr/scan.nii.gz) and {root}/more/imagesTr/scan.nii.gz" \
           in reason and "would share the case id 'scan'" in reason


def test_scan_nii_beside_scan_nii_gz_are_both_refused(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    image = nib.Nifti1Image(np.full((16, 16, 8), 40, np.int16), np.diag([1.5, 1.5, 2.0, 1.0]))
    for name in ("scan.nii", "scan.nii.gz", "other.nii.gz"):
        nib.save(image, folder / name)
    dataset = load_dataset(folder, log=lambda m: None)
    assert [c.case_id for c in dataset.cases] == ["other"]
    (reason,) = dataset.rejected
    assert f"{folder}/scan.nii and {folder}/scan.nii.gz would share the case id 'scan'" in reason


def test_an_entry_listed_twice_is_counted_once_with_a_warning_and_in_one_split(tmp_path):
    root = tmp_path / "Twice"
    a, b = write_case(root, "a"), write_case(root, "b")
    write_dataset(root, msd([a, b, dict(a)], validation=[a], test=[a["image"]]))
    said = []
    dataset = load_dataset(root, log=said.append)
    assert [(c.case_id, c.split) for c in dataset.cases] == [("a", "training"), ("b", "training")]
    assert dataset.rejected == ()
    assert len(dataset.warnings) == 3 and all("a.nii.gz is listed twice" in w for w in dataset.warnings)
    assert "counted once, in 'training'" in dataset.warnings[1] and any(m.startswith("warning: ") for m in said)
