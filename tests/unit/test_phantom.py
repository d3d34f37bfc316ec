"""The CT phantom: an MSD-layout dataset of plausible, varied and correctly oriented cases."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from swinray.config import ConfigError, DataConfig, FinetuneConfig, PhantomConfig, PretrainConfig
from swinray.data.phantom import (
    AIR_HU,
    FAT_HU,
    ORGAN_HU,
    ORIENTATIONS,
    PhantomCase,
    generate_case,
    write_phantom_dataset,
)
from swinray.data.source import resolve_source
from swinray.data.tasks import BTCV_LABELS
from swinray.presets import preset

ORGANS = set(range(1, 14))
IN_PLANE = np.ones((3, 3, 1), bool)  # erode within slices: slices are 4 mm, organs can be thin


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four cases, one per storage orientation, written once for the whole module."""
    out = tmp_path_factory.mktemp("phantom")
    summary = write_phantom_dataset(out, num_cases=len(ORIENTATIONS), seed=0)
    return out, summary


def load_pairs(out):
    manifest = json.loads((out / "dataset.json").read_text())
    return [(nib.load(out / item["image"]), nib.load(out / item["label"]))
            for item in manifest["training"]]


def canonical(case: PhantomCase):
    """The case's image and label reoriented to RAS, with the RAS affine."""
    image = nib.as_closest_canonical(nib.Nifti1Image(case.image, case.affine))
    label = nib.as_closest_canonical(nib.Nifti1Image(case.label, case.affine))
    return np.asarray(image.dataobj), np.asarray(label.dataobj), image.affine


def test_dataset_json_is_msd_format_and_lists_every_case(dataset):
    out, summary = dataset
    manifest = json.loads((out / "dataset.json").read_text())
    assert summary["num_cases"] == manifest["numTraining"] == len(manifest["training"]) == 4
    assert summary["dataset_file"] == str(out / "dataset.json") and summary["seconds"] > 0
    assert manifest["modality"] == {"0": "CT"} and manifest["tensorImageSize"] == "3D"
    assert manifest["labels"] == {str(i): name for i, name in enumerate(BTCV_LABELS)}
    assert manifest["numTest"] == 0 and manifest["test"] == []
    for i, item in enumerate(manifest["training"]):
        assert item == {"image": f"./imagesTr/phantom_{i:03d}.nii.gz",
                        "label": f"./labelsTr/phantom_{i:03d}.nii.gz"}
        assert (out / item["image"]).is_file() and (out / item["label"]).is_file()


def test_written_image_is_int16_and_label_uint8_on_one_scanner_grid(dataset):
    for image, label in load_pairs(dataset[0]):
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape == (128, 128, 64)
        np.testing.assert_allclose(image.affine, label.affine)
        for img in (image, label):
            assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
            np.testing.assert_allclose(img.header.get_zooms(),
                                       np.linalg.norm(img.affine[:3, :3], axis=0), rtol=1e-5)


def test_every_case_holds_all_13_organs_and_nothing_else(dataset):
    for _, label in load_pairs(dataset[0]):
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) == ORGANS | {0}


def test_organ_interiors_have_their_organ_hu():
    for seed in range(3):
        case = generate_case(seed)
        for value, (low, high) in ORGAN_HU.items():
            interior = ndimage.binary_erosion(case.label == value, IN_PLANE)
            median = np.median(case.image[interior])
            # 20 HU for noise and partial volume; neighbouring organs differ by more.
            assert low - 20 <= median <= high + 20, (seed, BTCV_LABELS[value], median)


def test_air_surrounds_the_body_and_fat_lies_under_the_skin():
    image, label, _ = canonical(generate_case(1))
    axial = image[:, :, image.shape[2] // 2]
    assert abs(np.median(axial[:5, :5]) - AIR_HU) < 30          # a corner of the field of view
    body = ndimage.binary_fill_holes(axial > -500)
    under_skin = ndimage.binary_erosion(body, iterations=1) & ~ndimage.binary_erosion(body,
                                                                                      iterations=3)
    assert FAT_HU[0] - 20 <= np.median(axial[under_skin]) <= FAT_HU[1] + 20


def test_same_seed_same_case_and_different_seeds_differ():
    first, again, other = generate_case(7), generate_case(7), generate_case(8)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.label.tobytes() == again.label.tobytes()
    assert np.array_equal(first.affine, again.affine)
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.label, other.label)


def test_slices_are_thicker_than_pixels_and_orientations_vary(dataset):
    axcodes = set()
    for image, _ in load_pairs(dataset[0]):
        pixel_x, pixel_y, slice_mm = nib.as_closest_canonical(image).header.get_zooms()
        assert pixel_x == pytest.approx(pixel_y) and slice_mm > pixel_x
        assert 300 <= pixel_x * 128 <= 380                      # a clinical abdominal field of view
        axcodes.add(nib.aff2axcodes(image.affine))
    assert len(axcodes) >= 2


def test_anatomy_points_the_same_way_in_world_space_whatever_the_storage_order(dataset):
    # RAS+ world: +x is the patient's right, +y anterior, +z superior.
    for image, label in load_pairs(dataset[0]):
        label = nib.as_closest_canonical(label)
        data = np.asarray(label.dataobj)

        def world(name):
            voxel = np.argwhere(data == BTCV_LABELS.index(name)).mean(axis=0)
            return (label.affine @ np.append(voxel, 1.0))[:3]

        assert world("liver")[0] > world("spleen")[0]                # liver on the patient's right
        assert world("right_kidney")[0] > world("left_kidney")[0]
        assert world("inferior_vena_cava")[0] > world("aorta")[0]
        assert world("pancreas")[1] > world("aorta")[1]               # pancreas in front of aorta
        assert world("esophagus")[2] > world("right_kidney")[2]       # esophagus at the top


def test_shape_argument_is_respected_and_small_grids_keep_every_organ():
    for seed in range(len(ORIENTATIONS)):
        case = generate_case(seed, shape=(64, 64, 32))
        assert case.image.shape == case.label.shape == (64, 64, 32)
        assert set(np.unique(case.label).tolist()) == ORGANS | {0}
    assert generate_case(3, shape=(96, 64, 48)).image.shape == (96, 64, 48)


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (16, 16, 16)}, "at least"),
    ({"shape": (64, 64)}, "3 integers"),
    ({"num_cases": 0}, "num_cases"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_rejected_with_the_field_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_phantom_dataset(tmp_path, **{"num_cases": 1, **kwargs})


def test_a_command_given_no_data_writes_the_phantom_at_data_phantom_shape(tmp_path):
    data = DataConfig(phantom_dir=str(tmp_path / "phantom"), num_phantom_cases=1, phantom_shape=(64, 64, 32))
    root = resolve_source(data, log=lambda *_: None)
    (case,) = json.loads((root / "dataset.json").read_text())["training"]
    assert nib.load(root / case["image"]).shape == (64, 64, 32)
    said = []
    resolve_source(data, log=said.append)                       # the phantom it wrote: nothing to say
    resolve_source(DataConfig(phantom_dir=data.phantom_dir), log=said.append)   # the default shape asked
    assert len(said) == 1 and "has 64 x 64 x 32 voxels per case: data.phantom_shape=128,128,64 applies only" in said[0]


def test_the_debug_presets_read_the_phantom_that_the_quickstarts_phantom_step_writes():
    phantom = preset(PhantomConfig, "debug")
    for config in (FinetuneConfig, PretrainConfig):
        data = preset(config, "debug").data
        assert (data.phantom_dir, data.num_phantom_cases, data.phantom_shape) == \
            (phantom.out_dir, phantom.num_cases, phantom.shape), config.__name__


def test_a_phantom_shape_too_small_for_its_organs_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="phantom_shape"):
        DataConfig(phantom_shape=(32, 64, 32))
