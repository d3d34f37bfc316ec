"""The task registry: BTCV and all ten MSD tasks, each with settings a pipeline can use."""
import pytest

from swinray.data.tasks import BTCV_LABELS, TASKS, TaskSpec, get_task

MSD = [f"Task{i:02d}_{n}" for i, n in enumerate(
    ["BrainTumour", "Heart", "Liver", "Hippocampus", "Prostate", "Lung", "Pancreas",
     "HepaticVessel", "Spleen", "Colon"], start=1)]


def test_registry_has_btcv_and_all_ten_msd_tasks():
    assert set(TASKS) == {"BTCV", *MSD}


def test_btcv_has_background_plus_13_organs_in_reference_order():
    btcv = get_task("BTCV")
    assert btcv.num_classes == 14 and btcv.label_names == BTCV_LABELS
    assert btcv.label_names[1] == "spleen" and btcv.label_names[6] == "liver"
    assert btcv.label_names[13] == "left_adrenal_gland"
    assert btcv.dataset_file == "dataset_0.json"
    assert btcv.window_hu == (-175.0, 250.0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_usable(name):
    task = get_task(name)
    assert task.label_names[0] == "background" and task.num_classes >= 2
    assert all(side % 32 == 0 and side >= 64 for side in task.roi_size)
    assert all(s > 0 for s in task.spacing_mm) and len(task.spacing_mm) == 3
    if task.modality == "CT":
        low, high = task.window_hu
        assert task.intensity == "ct_window" and -1100 <= low < high <= 1100
    else:
        assert task.intensity == "zscore_nonzero" and task.window_hu is None


def test_multichannel_tasks_keep_their_channels():
    assert get_task("Task01_BrainTumour").num_channels == 4
    assert get_task("Task05_Prostate").channel_names == ("T2", "ADC")


def test_unknown_task_lists_valid_names():
    with pytest.raises(KeyError, match=r"unknown task 'Task11_Knee'.*Task04_Hippocampus.*auto"):
        get_task("Task11_Knee")


def test_invalid_roi_is_refused_with_the_rule():
    with pytest.raises(ValueError, match="multiples of 32 and at least 64"):
        TaskSpec("mine", "CT", ("CT",), ("background", "x"), (1.0, 1.0, 1.0), "ct_window",
                 (-100.0, 100.0), (96, 96, 40))


def test_left_right_pairs_come_from_side_words_and_skip_heart_chambers():
    from swinray.data.tasks import left_right_pairs
    names = ("background", "Parotid_L", "Parotid_R", "Lens", "lung left", "lung right", "LeftParotidGland",
             "left_ventricle", "right_ventricle")
    assert left_right_pairs(names) == ((1, 2), (4, 5))          # no "Lens" side, no heart chambers
    with pytest.raises(ValueError, match="'Kidney_R' and 'kidney_r' name the same side"):
        left_right_pairs(("background", "Kidney_R", "kidney_r", "Kidney_L"))
    with pytest.raises(ValueError, match="task mine: label_pairs entry 9 is neither"):
        TaskSpec("mine", "CT", ("CT",), ("background", "a", "b"), (1.0, 1.0, 1.0), "ct_window", (-100.0, 100.0),
                 (64, 64, 64), label_pairs=((1, 9),))
