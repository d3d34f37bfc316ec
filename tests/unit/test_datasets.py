"""Dataset manifests: MSD and BTCV files, plain folders, paths kept inside the root, auto tasks."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import shared_dataset
from swinray.config import DataConfig
from swinray.data.datasets import check_inside, load_dataset
from swinray.errors import DatasetError
from swinray.presets import PRESET_CPU_HEADNECK_CT, PRESET_CPU_HEADNECK_OAR
from swinray.resolve import place_folders


def write_case(folder, name, shape=(32, 32, 16), zooms=(0.8, 0.8, 3.0), hu=40, label=True):
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    rng = np.random.default_rng(len(name))
    image = (rng.normal(hu, 10, shape)).astype(np.int16)
    nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"{name}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[8:20, 8:20, 4:10] = 1
    if label:
        nib.save(nib.Nifti1Image(seg, affine), folder / "labelsTr" / f"{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def write_msd(folder, entries, modality=None, labels=None, **extra):
    meta = {"name": folder.name, "modality": modality or {"0": "CT"},
            "labels": labels or {"0": "background", "1": "organ"}, "training": entries, **extra}
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_user_task_not_in_registry_is_derived_from_dataset_json_and_data(tmp_path):
    root = tmp_path / "MyKidneys"
    write_msd(root, [write_case(root, f"c{i}") for i in range(3)])
    ds = load_dataset(root)
    assert [c.case_id for c in ds.cases] == ["c0", "c1", "c2"]
    assert ds.task.name == "MyKidneys" and ds.task.modality == "CT"
    assert ds.task.label_names == ("background", "organ")
    assert ds.task.spacing_mm == (0.8, 0.8, 3.0)
    assert ds.task.roi_size == (64, 64, 64)           # small volumes: the smallest valid ROI
    low, high = ds.task.window_hu                     # from HU inside the labels (mean 40, sd 10)
    assert 0 < low < 40 < high < 80
    assert all(c.label and c.label.startswith(str(root)) for c in ds.cases)


def test_mri_user_task_uses_zscore_and_keeps_channel_names(tmp_path):
    root = tmp_path / "Brains"
    write_msd(root, [write_case(root, "b0")], modality={"0": "T1", "1": "FLAIR"})
    task = load_dataset(root).task
    assert task.intensity == "zscore_nonzero" and task.channel_names == ("T1", "FLAIR")


def test_nnunet_v2_style_labels_are_understood(tmp_path):
    root = tmp_path / "V2"
    write_msd(root, [write_case(root, "v0")], labels={"background": 0, "tumour": 2, "organ": 1})
    assert load_dataset(root).task.label_names == ("background", "organ", "tumour")


def test_btcv_dataset_0_json_with_training_and_validation(tmp_path):
    root = tmp_path / "btcv"
    train = [write_case(root, f"img{i:04d}") for i in range(1, 4)]
    meta = {"labels": {str(i): n for i, n in enumerate(["background"] + ["o"] * 13)},
            "modality": {"0": "CT"}, "training": train[:2], "validation": train[2:],
            "test": ["./imagesTs/img0061.nii.gz"]}
    (root / "dataset_0.json").write_text(json.dumps(meta))
    ds = load_dataset(root, task="BTCV")
    assert ds.dataset_file.name == "dataset_0.json" and ds.task.num_classes == 14
    assert [c.case_id for c in ds.split("training")] == ["img0001", "img0002"]
    assert [c.case_id for c in ds.split("validation")] == ["img0003"]
    assert ds.split("test")[0].label is None


def test_registry_task_is_chosen_from_the_folder_name(tmp_path):
    root = tmp_path / "Task09_Spleen"
    write_msd(root, [write_case(root, "spleen_1")])
    assert load_dataset(root).task.window_hu == (-41.0, 176.0)


@pytest.mark.parametrize("entry", ["../outside.nii.gz", "./imagesTr/../../outside.nii.gz",
                                   "/etc/passwd"])
def test_paths_that_escape_the_dataset_root_are_refused_and_the_rest_kept(tmp_path, entry):
    root = tmp_path / "evil"
    good = write_case(root, "ok")
    write_msd(root, [good, {"image": entry, "label": good["label"]}])
    ds = load_dataset(root)
    assert [c.case_id for c in ds.cases] == ["ok"]
    assert len(ds.rejected) == 1
    assert "dataset.json: path" in ds.rejected[0] and "escapes the dataset root" in ds.rejected[0]


def test_a_dataset_with_only_escaping_paths_is_an_error(tmp_path):
    write_msd(tmp_path, [{"image": "../x.nii.gz", "label": "../y.nii.gz"}])
    with pytest.raises(DatasetError, match="no usable case.*escapes the dataset root"):
        load_dataset(tmp_path)


def test_check_inside_allows_nested_paths(tmp_path):
    assert check_inside(tmp_path, "a/./b/../c.nii.gz", tmp_path / "dataset.json") == str(tmp_path / "a" / "c.nii.gz")


def test_plain_folder_of_volumes_is_an_unlabelled_dataset(tmp_path):
    write_case(tmp_path, "scan_a", label=False)
    write_case(tmp_path, "scan_b", label=False)
    ds = load_dataset(tmp_path / "imagesTr")
    assert [c.case_id for c in ds.cases] == ["scan_a", "scan_b"]
    assert all(c.label is None for c in ds.cases)


def test_missing_or_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no dataset file .*, no NIfTI volumes .* and no DICOM series"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{broken")
    with pytest.raises(DatasetError, match=r"dataset\.json: cannot read the dataset file"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DatasetError, match="lists no cases"):
        load_dataset(tmp_path)


def test_unknown_task_name_is_an_error(tmp_path):
    root = tmp_path / "x"
    write_msd(root, [write_case(root, "a")])
    with pytest.raises(DatasetError, match="unknown task 'Spleen'.*Task09_Spleen"):
        load_dataset(root, task="Spleen")


def test_real_hippocampus_dataset_is_recognised():
    ds = load_dataset(shared_dataset("Task04_Hippocampus"))
    assert ds.task.name == "Task04_Hippocampus" and len(ds.cases) == 208
    assert all(c.label for c in ds.cases)


def test_unset_cache_and_phantom_folders_follow_the_run_storage_and_set_ones_stay():
    placed = place_folders(DataConfig(), "/mnt/shared/runs")
    assert (placed.cache_dir, placed.phantom_dir) == ("/mnt/shared/runs/cache", "/mnt/shared/runs/phantom")
    kept = place_folders(DataConfig(cache_dir="/fast/cache", phantom_dir="p"), "/mnt/shared/runs")
    assert (kept.cache_dir, kept.phantom_dir) == ("/fast/cache", str(Path("p").resolve()))   # as workers find it


def write_ct_with_a_small_body(folder, name):
    """A 192 x 192 x 64 CT at 2 x 2 x 3 mm: a 60 x 50 x 40-voxel body in air, two parotid-like labels."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    image = np.full((192, 192, 64), -1000, np.int16)
    image[60:120, 70:120, 10:50] = np.random.default_rng(0).normal(40, 10, (60, 50, 40))
    seg = np.zeros(image.shape, np.uint8)
    seg[65:75, 80:90, 20:30], seg[100:110, 80:90, 20:30] = 1, 2
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), folder / "labelsTr" / f"{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def test_an_inferred_spacing_is_the_median_voxel_of_every_case_and_one_that_a_case_has(tmp_path):
    # the first 8 (those read whole for the CT window) are mostly 1.6 mm; all 12 are half 0.8, half 1.6,
    # whose average median, 1.2 mm, no case has
    zooms = [1.6, 1.6, 0.8, 1.6, 1.6, 0.8, 1.6, 1.6] + [0.8] * 4
    root = tmp_path / "Mixed"
    write_msd(root, [write_case(root, f"c{i:02d}", zooms=(z, z, 3.0)) for i, z in enumerate(zooms)])
    assert load_dataset(root).task.spacing_mm == (0.8, 0.8, 3.0)


def test_a_ct_task_takes_its_roi_from_the_body_and_its_label_pairs_from_left_right_names(tmp_path):
    root = tmp_path / "HeadNeck"
    write_msd(root, [write_ct_with_a_small_body(root, f"p{i}") for i in range(2)],
              labels={"0": "background", "1": "LeftParotid", "2": "RightParotid"})
    task = load_dataset(root).task
    assert task.roi_size == (64, 64, 64)        # the body (120 x 100 x 120 mm), not the array (384 x 384 x 192 mm)
    assert task.label_pairs == ((1, 2),)
    assert task.window_hu[0] < 40 < task.window_hu[1]


def test_label_pairs_can_be_given_in_dataset_json_and_a_wrong_one_names_the_file(tmp_path):
    root = tmp_path / "Eyes"
    entries = [write_case(root, "e0")]
    write_msd(root, entries, labels={"0": "background", "1": "globe_a", "2": "globe_b"}, label_pairs=[["globe_a", 2]])
    assert load_dataset(root).task.label_pairs == ((1, 2),)
    write_msd(root, entries, labels={"0": "background", "1": "globe_a", "2": "globe_b"}, label_pairs=[[1, 7]])
    with pytest.raises(DatasetError, match=r"dataset.json: label_pairs entry 7 is neither"):
        load_dataset(root)


def test_real_head_and_neck_ct_gets_a_ct_setting_with_the_parotids_paired():
    task = load_dataset(shared_dataset("OpenKBP_HN_OAR")).task
    assert (task.modality, task.intensity) == ("CT", "ct_window")
    assert task.label_names[3:5] == ("RightParotid", "LeftParotid") and task.label_pairs == ((4, 3),)
    assert task.spacing_mm == (3.906, 3.906, 2.5)       # the median voxel of all 115 cases, 41 of which have it
    low, high = task.window_hu
    assert -200 < low < 0 and 1000 < high < 2000      # soft tissue to the mandible's bone
    assert all(side in (64, 96) for side in task.roi_size)
    # pretraining happens in fine-tuning's window, and at the voxel size its measured encoder was pretrained
    # at: 4.054 mm, the task's before inference read every case, 3.8% coarser than fine-tuning's
    assert PRESET_CPU_HEADNECK_CT.data.spacing_mm == (4.054, 4.054, 2.5)
    assert PRESET_CPU_HEADNECK_CT.data.window_hu == PRESET_CPU_HEADNECK_OAR.data.window_hu == (-160.0, 240.0)
