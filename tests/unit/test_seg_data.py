"""Fine-tuning crops: ROI-sized, label kept in register, foreground found from cached indices."""
import numpy as np
import torch

from swinray.config import SegConfig
from swinray.data.cache import write_case
from swinray.train.seg_data import StepBatches, load_validation_case, train_transforms


def cached_case(tmp_path, shape=(20, 50, 30), case_id="c0", noise=0.0):
    image = np.zeros((1, *shape), np.float16)
    label = np.zeros(shape, np.uint8)
    label[5:9, 30:40, 10:14] = 2
    image[0][label > 0] = 7.0                               # the structure is where the label is
    image[0] += np.random.default_rng(ord(case_id[-1])).normal(0, noise, shape).astype(np.float16)   # tells cases apart
    write_case(tmp_path, case_id, image, label, {})
    return str(tmp_path / "cases" / f"{case_id}.npy")


def test_crops_are_roi_sized_padded_and_keep_image_and_label_in_register(tmp_path):
    path = cached_case(tmp_path)
    transform = train_transforms((32, 64, 32), SegConfig(pos_neg_ratio=1e6, rotate_degrees=0.0,
                                                         intensity_jitter=0.0))
    transform.set_random_state(seed=0)
    for _ in range(4):
        (sample,) = transform({"path": path})
        assert set(sample) == {"image", "label"}            # cached indices do not reach the batch
        assert sample["image"].shape == (1, 32, 64, 32) and sample["label"].shape == (1, 32, 64, 32)
        assert int((sample["label"] == 2).sum()) == 4 * 10 * 4     # positive crops hold the structure
        assert torch.equal(sample["image"][sample["label"] > 0], torch.full((160,), 7.0))


def test_foreground_indices_are_computed_once_and_cached_under_the_keys_the_crop_reads(tmp_path):
    path = cached_case(tmp_path)
    transform = train_transforms((32, 64, 32), SegConfig())
    deterministic = transform.transforms[:3]                # what CacheDataset caches
    cached = {"path": path}
    for t in deterministic:
        cached = t(cached)
    assert len(cached["label_fg_indices"]) == 160
    crop = transform.transforms[3]
    assert (crop.fg_indices_key, crop.bg_indices_key) == ("label_fg_indices", "label_bg_indices")


def test_validation_case_is_the_whole_volume(tmp_path):
    image, label = load_validation_case(cached_case(tmp_path))
    assert image.shape == (1, 1, 20, 50, 30) and label.shape == (1, 1, 20, 50, 30)
    assert image.dtype == torch.float32


def test_a_steps_batch_is_the_same_whether_drawn_first_after_others_or_again(tmp_path):
    """What a resumed run relies on: step k's batch follows from k alone, and drawing batches never
    changes the cached cases."""
    paths = [cached_case(tmp_path, case_id=f"c{i}", noise=1.0) for i in range(3)]
    batches = StepBatches(paths, (16, 32, 16), SegConfig(), batch_size=2, seed=3, rank=1)
    first = batches(5)
    run = [batches(step) for step in range(11)]
    again = batches(5)
    for batch in (run[5], again):
        assert torch.equal(batch["image"], first["image"]) and torch.equal(batch["label"], first["label"])
    assert first["image"].shape == (2, 1, 16, 32, 16)
    assert not torch.equal(run[4]["image"], run[5]["image"])         # steps differ
