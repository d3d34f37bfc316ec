"""Predictions go back onto the input's own grid: preprocessing then inversion is the identity.

A label map is pushed through the exact preprocessing of the image (reorientation, foreground crop,
resampling to the task spacing) and mapped back with ``labels_on_source_grid``; the result must
overlay the original on an oblique, anisotropic, non-RAS input.
"""
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.utils import one_hot
from scipy.spatial.transform import Rotation

from swinray.data.cases import Case
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import as_meta_tensor, preprocess_transforms
from swinray.seg.inference import labels_on_source_grid
from swinray.seg.metrics import dice_per_case
from swinray.seg.predict import write_label_map

TASK = TaskSpec("Toy", "MRI", ("MRI",), ("background", "a", "b"), (1.0, 1.0, 1.0), "zscore_nonzero", None,
                (64, 64, 64))


def oblique_case(shape=(40, 30, 12), spacing=(0.8, 1.1, 3.0)):
    """An image with two ellipsoids (labels 1, 2), rotated 20/10/5 degrees, stored in LPS-ish axes."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    mm = grid * np.array(spacing)
    label = np.zeros(shape, np.uint8)
    label[(((mm - [12, 15, 18]) / [7, 8, 9]) ** 2).sum(-1) < 1] = 1
    label[(((mm - [22, 16, 18]) / [4, 6, 8]) ** 2).sum(-1) < 1] = 2
    image = np.where(label > 0, 300.0 + 50 * label, 100.0).astype(np.float32)
    image[:2] = 0                                           # a border of zeros: the crop does something
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, 10, 5], degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ affine[:3, :3]  # x and y flipped: not RAS
    affine[:3, 3] = [30.0, -12.0, 7.0]
    return image, label, affine


def preprocessed_label(image, label, affine, task=TASK):
    out = preprocess_transforms(task, labelled=True)({"image": as_meta_tensor(image[None], affine),
                                                      "label": as_meta_tensor(label[None], affine)})
    return out["label"], out["image"].affine


def test_an_oblique_anisotropic_label_map_survives_the_round_trip():
    image, label, affine = oblique_case()
    pre, pre_affine = preprocessed_label(image, label, affine)
    assert pre.shape[1:] != label.shape                     # it really was resampled
    probs = one_hot(torch.as_tensor(np.asarray(pre), dtype=torch.long)[None], 3)[0]
    back = labels_on_source_grid(probs, pre_affine, affine, label.shape)
    assert back.shape == label.shape and back.dtype == np.uint8
    dice = dice_per_case(torch.from_numpy(back)[None, None], torch.from_numpy(label)[None, None], 3)
    assert dice.min() > 0.9, dice                           # nearest resampling there and back
    for cls in (1, 2):                                      # no shift: centroids agree in world space
        centroids = [affine[:3, :3] @ np.argwhere(m == cls).mean(0) for m in (back, label)]
        assert np.linalg.norm(centroids[0] - centroids[1]) < 0.3, (cls, centroids)


def test_on_the_task_grid_the_round_trip_is_exact():
    image, label, _ = oblique_case(spacing=(1.0, 1.0, 1.0))
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])                 # LAS: reoriented, not resampled
    pre, pre_affine = preprocessed_label(image, label, affine)
    probs = one_hot(torch.as_tensor(np.asarray(pre), dtype=torch.long)[None], 3)[0]
    back = labels_on_source_grid(probs, pre_affine, affine, label.shape)
    assert np.array_equal(back, label)


def test_written_label_maps_keep_the_inputs_geometry(tmp_path):
    image, label, affine = oblique_case()
    source = tmp_path / "scan.nii.gz"
    img = nib.Nifti1Image(image, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    nib.save(img, source)
    write_label_map(label, source, tmp_path / "out" / "scan.nii.gz")
    written = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert written.shape == label.shape and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, img.affine, atol=1e-5)
    assert written.header.get_zooms() == pytest.approx(img.header.get_zooms())
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)
    assert np.array_equal(np.asarray(written.dataobj), label)


def test_an_unreadable_input_is_a_case_error_naming_the_file():
    from swinray.data.nifti import CaseError
    from swinray.seg.model_input import segment_case
    with pytest.raises(CaseError, match="file not found"):
        segment_case(torch.nn.Identity(), Case("x", ("/nonexistent/x.nii.gz",), None, "test"), TASK,
                     (64, 64, 64), 1, 0.25, torch.device("cpu"))
