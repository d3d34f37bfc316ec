"""Post-processing chosen on validation: a class keeps only its largest connected component where that
raised its validation Dice; the model file carries the choice, and scoring applies it."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from hostile_files import TASK
from monai.transforms import KeepLargestConnectedComponent

from swinray.config import EvaluateConfig, PredictConfig, SegConfig
from swinray.data.cases import Case
from swinray.models.registry import build_swin_unetr
from swinray.models.segmenter import load_segmenter, save_segmenter
from swinray.seg.evaluate import score_cases
from swinray.seg.postprocess import chosen_classes, classes_improved, keep_largest_components


def two_pieces_each() -> np.ndarray:
    """(1, 16, 16, 16): class 1 is a cube of 216 voxels and an island of 8; class 2 likewise."""
    labels = np.zeros((1, 16, 16, 16), np.uint8)
    labels[0, 1:7, 1:7, 1:7], labels[0, 12:14, 12:14, 12:14] = 1, 1
    labels[0, 1:7, 9:15, 9:15], labels[0, 12:14, 1:3, 1:3] = 2, 2
    return labels


def test_a_listed_class_keeps_its_largest_component_and_its_islands_become_background():
    labels = two_pieces_each()
    kept = keep_largest_components(labels, [1])
    assert isinstance(kept, np.ndarray) and kept.dtype == np.uint8
    assert (kept == 1).sum() == 216 and kept[0, 12:14, 12:14, 12:14].max() == 0
    assert np.array_equal(kept == 2, labels == 2)                       # not listed: as predicted
    both = keep_largest_components(torch.from_numpy(labels), [1, 2])
    assert isinstance(both, torch.Tensor) and ((both == 1).sum(), (both == 2).sum()) == (216, 216)
    assert keep_largest_components(labels, []) is labels
    assert np.array_equal(labels, two_pieces_each())                    # the input is left as it was


def test_each_class_keeps_what_monais_transform_keeps_and_an_absent_class_is_skipped():
    rng = np.random.default_rng(0)
    scatter = rng.random((1, 32, 32, 24)) < 0.05
    labels = np.zeros((1, 32, 32, 24), np.uint8)
    labels[:, :16][scatter[:, :16]], labels[:, 16:][scatter[:, 16:]] = 1, 3     # each class in its own half
    labels[0, 2:12, 2:12, 2:10], labels[0, 18:30, 16:30, 8:20] = 1, 3       # with one large piece
    monai = KeepLargestConnectedComponent(applied_labels=[1, 3, 5], is_onehot=False, independent=True)(labels.copy())
    kept = keep_largest_components(labels, [1, 3, 5])                     # 5: no such voxel
    assert np.array_equal(kept, np.asarray(monai)) and (kept != labels).sum() > 50


def test_validation_chooses_only_the_classes_whose_dice_rose():
    raw, kept = [0.80, 0.70, float("nan"), 0.50], [0.82, 0.70, 0.90, 0.40]
    assert classes_improved(raw, kept) == [1]                           # a tie, an unseen class, a loss: left
    assert classes_improved([0.8], []) == []                            # a run saved before the choice existed


def test_a_model_file_without_the_choice_or_scoring_asked_for_raw_predictions_post_processes_nothing():
    meta = {"largest_component_classes": [1, 3]}
    assert chosen_classes(meta) == (1, 3) and chosen_classes(meta, enabled=False) == ()
    assert chosen_classes({}) == ()


def test_a_model_file_whose_classes_are_not_its_tasks_is_refused_naming_it(tmp_path):
    kwargs = dict(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    task = json.loads(json.dumps(TASK.__dict__))
    good = save_segmenter(build_swin_unetr(**kwargs), tmp_path / "good.pt", kwargs, (64,) * 3, task,
                          largest_component_classes=[1])
    assert chosen_classes(load_segmenter(good)[1]) == (1,)
    bad = save_segmenter(build_swin_unetr(**kwargs), tmp_path / "bad.pt", kwargs, (64,) * 3, task,
                         largest_component_classes=[2])
    with pytest.raises(ValueError, match=r"bad\.pt: largest_component_classes \[2\] are not foreground classes"):
        load_segmenter(bad)


@pytest.mark.parametrize("config", [SegConfig, EvaluateConfig, PredictConfig])
def test_post_processing_is_on_by_default_where_a_model_is_chosen_scored_or_applied(config):
    assert config().largest_component is True


class Thresholder(torch.nn.Module):
    """A stand-in network: the organ wherever the windowed image is bright."""

    def forward(self, x):
        organ = (x[:, :1] > 0.3).float()
        return torch.cat([4 * (1 - organ), 4 * organ], dim=1)


def test_scoring_applies_the_models_choice_on_the_source_grid_and_reports_the_dice_before_it(tmp_path):
    image = np.full((32, 32, 16), -1000, np.int16)
    image[4:14, 4:14, 3:10] = 40                     # the organ, 700 voxels
    image[20:26, 20:26, 9:14] = 40                   # bright tissue away from it, 180 voxels
    truth = np.zeros(image.shape, np.uint8)
    truth[4:14, 4:14, 3:10] = 1
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "label.nii.gz")
    case = Case("c", (str(tmp_path / "image.nii.gz"),), str(tmp_path / "label.nii.gz"), "test")
    meta = {"task": json.loads(json.dumps(TASK.__dict__)), "roi_size": [64, 64, 64], "largest_component_classes": [1]}
    rows, scored = {}, {}
    for enabled in (True, False):
        rows[enabled], rejected, scored[enabled] = score_cases(Thresholder(), meta, [case], 1, 0.0, torch.device("cpu"),
                                                   lambda m: None, tta_flips=False, largest_component=enabled)
        assert not rejected
    assert scored[True]["largest_component"] == ["organ"] and scored[False]["largest_component"] == []
    assert scored[True]["mean_dice"] == pytest.approx(1.0)
    before = 2 * 700 / (700 + 880)
    assert scored[True]["before_postprocessing"]["mean_dice"] == pytest.approx(before)
    assert scored[False]["mean_dice"] == scored[False]["before_postprocessing"]["mean_dice"] == pytest.approx(before)
    assert rows[True][0]["dice_before_postprocessing_organ"] == pytest.approx(before)     # per case, paired
    assert "dice_before_postprocessing_organ" not in rows[False][0]
