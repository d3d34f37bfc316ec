"""Pretraining crops: from the memory-mapped cache, around the body, the same for the same step."""
import numpy as np
import pytest

from swinray.data.cache import write_case
from swinray.data.tasks import TaskSpec
from swinray.train.crops import MRI_BODY, crop_batch, crop_body
from swinray.train.replay import step_generator

ROI = (32, 32, 32)
CORPUS_TASK = TaskSpec("corpus", "CT", ("CT",), ("background",), (1.5, 1.5, 2.0), "ct_window",
                       (-1000.0, 1000.0), (96, 96, 96))


def air_with_a_small_body(tmp_path, case_id: str, corner: int) -> str:
    """A 128 x 128 x 64 case, windowed as the pretraining corpus is: air (0.0 = -1000 HU) but for a
    24^3 body (0.52 = 40 HU): a neck beside the air of its shoulders' bounding box."""
    image = np.zeros((1, 128, 128, 64), np.float16)
    image[0, corner:corner + 24, corner:corner + 24, 20:44] = 0.52
    write_case(tmp_path, case_id, image, None, {})
    return str(tmp_path / "cases" / f"{case_id}.npy")


@pytest.fixture
def corpus(tmp_path):
    return [air_with_a_small_body(tmp_path, f"ct{i}", corner) for i, corner in enumerate((4, 50, 100))]


def ct(window):
    return TaskSpec("oar", "CT", ("CT",), ("background", "x"), (4.0, 4.0, 2.5), "ct_window", window, (64, 64, 64))


def test_the_body_is_the_ct_body_edge_in_windowed_units_and_any_non_zero_mri_voxel():
    assert crop_body(CORPUS_TASK) == pytest.approx(0.25)          # -500 HU in [-1000, 1000]
    assert crop_body(ct((-117.0, 1573.0))) == 0.0        # a window above the body's edge: its lower end
    assert crop_body(ct((-1400.0, -600.0))) == pytest.approx(0.999)   # a window below it: near its top
    mri = TaskSpec("mr", "MRI", ("T1",), ("background", "x"), (1.0, 1.0, 1.0), "zscore_nonzero", None, (64, 64, 64))
    assert crop_body(mri) == MRI_BODY


def test_mri_crops_hold_body_below_its_mean_too(tmp_path):
    """Z-scored MRI: the body is every non-zero voxel, negative ones included."""
    image = np.zeros((1, 128, 128, 64), np.float16)
    image[0, 4:28, 4:28, 20:44] = -0.8                    # a body darker than the mean
    write_case(tmp_path, "mr", image, None, {})
    path = str(tmp_path / "cases" / "mr.npy")
    for step in range(20):
        crop = crop_batch([path], ROI, 1, step_generator(0, 0, step), MRI_BODY)
        assert (crop != 0).float().mean() > 0.05, f"step {step}: a crop of background"


def test_every_crop_holds_body_when_drawn_around_it(corpus):
    body_above = crop_body(CORPUS_TASK)
    for step in range(40):
        batch = crop_batch(corpus, ROI, 2, step_generator(0, 0, step), body_above)
        assert batch.shape == (2, 1, *ROI)
        body_fraction = (batch > body_above).float().mean(dim=(1, 2, 3, 4))
        assert (body_fraction > 0.05).all(), f"step {step}: a crop of mostly air ({body_fraction.min():.3f} body)"


def test_uniform_crops_of_the_same_corpus_are_mostly_air(corpus):
    """What the body crops fix: drawn anywhere, most crops of this corpus hold no body at all."""
    air = sum(int((crop_batch(corpus, ROI, 2, step_generator(0, 0, step)) == 0).all(dim=(1, 2, 3, 4)).sum())
              for step in range(40))
    assert air > 40


def test_a_steps_crops_follow_from_the_step_alone(corpus):
    first = crop_batch(corpus, ROI, 2, step_generator(3, 1, 7), 0.25)
    crop_batch(corpus, ROI, 2, step_generator(3, 1, 8), 0.25)
    assert np.array_equal(first, crop_batch(corpus, ROI, 2, step_generator(3, 1, 7), 0.25))
