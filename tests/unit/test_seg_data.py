"""Fine-tuning crops: ROI-sized, label kept in register, foreground found from cached indices."""
import numpy as np
import torch

from swinray.config import SegConfig
from swinray.data.cache import write_case
from swinray.data.tasks import TaskSpec
from swinray.data.transforms import as_meta_tensor, preprocess_transforms
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


def test_a_left_right_flip_keeps_each_paired_label_on_its_anatomical_side(tmp_path):
    """Head-and-neck CT stored as OpenKBP stores it (rows posterior, columns toward the patient's left,
    slices inferior): after reorientation to RAS and any number of training flips, the right parotid
    still lies on the patient's right (high X in RAS) and the left one on the left."""
    task = TaskSpec("HN", "CT", ("CT",), ("background", "Brainstem", "RightParotid", "LeftParotid"),
                    (4.0, 4.0, 2.5), "ct_window", (-160.0, 240.0), (64, 64, 64))
    assert task.label_pairs == ((3, 2),)
    shape = (24, 32, 16)                                # P, L, I voxel axes
    image = np.full(shape, -1000.0, np.float32)
    image[4:20, 4:28, 2:14] = 40.0                      # the body
    image[4:20, :, :] += np.arange(shape[1])[None, :, None]   # a left-right ramp: shows whether a crop was flipped
    label = np.zeros(shape, np.uint8)
    label[10:14, 14:18, 6:10] = 1                       # brainstem on the midline
    label[8:12, 6:10, 6:10] = 2                         # right parotid: low columns, the patient's right
    label[8:12, 22:26, 6:10] = 3                        # left parotid: high columns
    pli = np.array([[0.0, -4.0, 0.0, 0.0],             # as OpenKBP's headers: +column = -x (left),
                    [-4.0, 0.0, 0.0, 0.0],             # +row = -y (posterior),
                    [0.0, 0.0, -2.5, 0.0],             # +slice = -z (inferior)
                    [0.0, 0.0, 0.0, 1.0]])
    data = {"image": as_meta_tensor(image[None], pli), "label": as_meta_tensor(label[None], pli)}
    out = preprocess_transforms(task, labelled=True)(data)
    write_case(tmp_path, "hn", out["image"].numpy(), out["label"][0].numpy(), {})
    path = str(tmp_path / "cases" / "hn.npy")

    transform = train_transforms((64, 64, 64), SegConfig(rotate_degrees=0.0, intensity_jitter=0.0),
                                 task.label_pairs)
    transform.set_random_state(seed=1)
    flipped = 0
    for _ in range(8):
        (sample,) = transform({"path": path})
        x = torch.arange(64).view(64, 1, 1).expand(64, 64, 64)
        lab, img = sample["label"][0], sample["image"][0]
        right_x, left_x = x[lab == 2].float().mean(), x[lab == 3].float().mean()
        assert right_x > left_x, "the right parotid's label sits on the patient's left"
        body = img > 0.5
        ramp = np.polyfit(x[body].numpy().ravel(), img[body].numpy().ravel(), 1)[0]
        flipped += ramp > 0                             # RAS: the ramp rose toward the left (low X)
    assert 0 < flipped < 8                              # both flipped and unflipped crops were checked


def test_class_ratios_centre_crops_on_the_classes_asked_for(tmp_path):
    """Crops smaller than the case, all centred on class 1 when only it has weight: each holds it."""
    image = np.zeros((1, 96, 96, 96), np.float16)
    label = np.zeros((96, 96, 96), np.uint8)
    label[5:8, 5:8, 5:8] = 1                             # a small organ in a corner
    label[60:90, 60:90, 60:90] = 2                       # a large one far from it
    write_case(tmp_path, "two", image, label, {})
    path = str(tmp_path / "cases" / "two.npy")
    small_first = SegConfig(crop_class_ratios=(0.0, 1.0, 0.0), rotate_degrees=0.0, intensity_jitter=0.0)
    transform = train_transforms((32, 32, 32), small_first)
    transform.set_random_state(seed=0)
    assert all(int((transform({"path": path})[0]["label"] == 1).sum()) == 27 for _ in range(6))
    default = train_transforms((32, 32, 32), SegConfig(rotate_degrees=0.0, intensity_jitter=0.0))
    default.set_random_state(seed=0)       # foreground centres, mostly on the large organ: it is rarely in them
    assert sum(int((default({"path": path})[0]["label"] == 1).any()) for _ in range(12)) < 6
