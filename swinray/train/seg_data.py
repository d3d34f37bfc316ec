"""Fine-tuning data: seeded splits of the cached cases, and the MONAI chains that feed training.

Deterministic work (reading the cached case, padding to the ROI, finding foreground and background
voxels) is cached once per case by ``CacheDataset``; the random part (positive/negative-balanced
crops, flips, small rotations, intensity jitter) runs for every sample.
"""
from __future__ import annotations

import hashlib
import random
from typing import NamedTuple

import numpy as np
import torch
from monai.data import CacheDataset, list_data_collate
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    FgBgToIndicesd,
    Flipd,
    MapTransform,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
    SpatialPadd,
)

from swinray.config import SegConfig, SplitConfig
from swinray.data.cache import read_case
from swinray.data.tasks import LEFT_RIGHT_AXIS, LabelPairs, mirrored_labels
from swinray.train.replay import AUGMENT, batch_indices, step_seed


class Split(NamedTuple):
    train: list[dict]
    val: list[dict]                     # chooses the checkpoint (and a sweep's trial)
    test: list[dict]                    # influences nothing: scored once, at the end


def held_out(labelled: list[dict], fraction: float) -> list[dict]:
    """The test cases: a dataset file's own labelled test list, else ``fraction`` of the cases chosen
    by a hash of each case id, so the same cases whatever the seed, fold or label fraction (adding
    cases to the dataset can move them). ``fraction`` 0 holds nothing out."""
    listed = [r for r in labelled if r["split"] == "test"]
    if listed or fraction == 0:
        return listed if fraction else []
    ranked = sorted(labelled, key=lambda r: hashlib.sha256(r["case_id"].encode()).hexdigest())
    return ranked[:max(1, round(fraction * len(labelled)))]


def split_cases(rows: list[dict], split: SplitConfig) -> Split:
    """Training, validation and test rows of the labelled cached cases, reproducible from ``split``.

    The test cases are held out first (``held_out``) and never change. Of the rest, a dataset file
    that lists its own validation cases (BTCV's ``dataset_0.json``) keeps them when
    ``use_listed_validation``; otherwise validation is fold ``fold`` of ``num_folds``: every
    ``num_folds``-th case of the seeded shuffle (or of the listed order with ``shuffle=False``).
    ``label_fraction`` then keeps a seeded subset of the training cases, nested across fractions
    (a label-efficiency curve adds cases, it never swaps them).
    """
    labelled = [r for r in rows if r.get("label")]
    test = held_out(labelled, split.test_fraction)
    tested = {r["case_id"] for r in test}
    labelled = [r for r in labelled if r["case_id"] not in tested]
    listed = [r for r in labelled if r["split"] == "validation"]
    if split.use_listed_validation and listed:
        train, val = [r for r in labelled if r["split"] == "training"], listed
    else:
        order = list(range(len(labelled)))
        if split.shuffle:
            random.Random(split.seed).shuffle(order)
        val_positions = set(order[split.fold::split.num_folds])
        train = [r for i, r in enumerate(labelled) if i not in val_positions]
        val = [r for i, r in enumerate(labelled) if i in val_positions]
    if split.label_fraction < 1.0:
        keep = max(1, round(split.label_fraction * len(train)))
        ranked = list(range(len(train)))          # one seeded ranking: smaller fractions are subsets of larger
        random.Random(split.seed + 1).shuffle(ranked)
        chosen = set(ranked[:keep])
        train = [r for i, r in enumerate(train) if i in chosen]
    return Split(train, val, test)


class LoadCachedCased(MapTransform):
    """{"path": case.npy} -> {"image": (C, *S) float32, "label": (1, *S) uint8}, read whole."""

    def __init__(self) -> None:
        super().__init__(["path"])

    def __call__(self, data: dict) -> dict:
        image, label = read_case(data["path"], mmap=False)
        return {**data, "image": torch.from_numpy(image.astype(np.float32)),
                "label": torch.from_numpy(np.ascontiguousarray(label[None]))}


class RandLeftRightFlipd(RandomizableTransform, MapTransform):
    """``RandFlipd`` along left-right that also swaps the labels of each (left, right) pair.

    Mirroring a patient puts the right parotid where the left one lies; keeping its label would teach
    the model that right is left. One draw per call, as ``RandFlipd`` (so seeded runs replay alike).
    """

    def __init__(self, keys, label_key: str, pairs: LabelPairs, prob: float = 0.5) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.flip = Flipd(keys, spatial_axis=LEFT_RIGHT_AXIS)
        self.label_key = label_key
        self.swap = torch.tensor(mirrored_labels(pairs, max(v for pair in pairs for v in pair) + 1))

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return dict(data)
        out = self.flip(data)
        label = out[self.label_key]
        inside = label < len(self.swap)        # values above every pair's stay as they are
        out[self.label_key] = torch.where(inside, self.swap.to(label.device)[label.long() * inside], label.long()
                                          ).to(label.dtype)
        return out


def flips(keys: list[str], seg: SegConfig, label_pairs: LabelPairs) -> list:
    """Random flips along ``seg.flip_axes``; the left-right one swaps paired labels when there are any."""
    return [RandLeftRightFlipd(keys, "label", label_pairs) if axis == LEFT_RIGHT_AXIS and label_pairs
            else RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in seg.flip_axes]


def train_transforms(roi_size, seg: SegConfig, label_pairs: LabelPairs = ()) -> Compose:
    keys = ["image", "label"]
    roi = tuple(roi_size)
    rad = np.deg2rad(seg.rotate_degrees)
    if seg.crop_class_ratios:
        indices = ClassesToIndicesd("label", num_classes=len(seg.crop_class_ratios))
        crop = RandCropByLabelClassesd(keys, "label", roi, ratios=list(seg.crop_class_ratios),
                                       num_classes=len(seg.crop_class_ratios), num_samples=1,
                                       indices_key="label_cls_indices", allow_smaller=True)
    else:
        indices = FgBgToIndicesd("label")
        crop = RandCropByPosNegLabeld(keys, "label", roi, pos=seg.pos_neg_ratio, neg=1.0, num_samples=1,
                                      fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
                                      allow_smaller=True)
    random_part = [crop, *flips(keys, seg, label_pairs)]
    if seg.rotate_degrees > 0:
        random_part.append(RandRotated(keys, range_x=rad, range_y=rad, range_z=rad, prob=0.2,
                                       mode=("bilinear", "nearest"), padding_mode="zeros"))
    if seg.intensity_jitter > 0:
        random_part += [RandScaleIntensityd("image", factors=seg.intensity_jitter, prob=0.5),
                        RandShiftIntensityd("image", offsets=seg.intensity_jitter, prob=0.5)]
    return Compose([LoadCachedCased(), SpatialPadd(keys, roi), indices, *random_part, SelectItemsd(keys)])


class StepBatches:
    """Training batches by step: step k's cases and augmentations follow from (seed, rank, k) alone
    (``replay``), so a run resumed at step k draws what an uninterrupted one drew. ``CacheDataset``
    keeps the deterministic part of each case; every random transform makes new tensors, so the
    cache itself never changes. Loading runs in the training process: a random crop of a cached
    case takes ~15 ms, and a prefetch thread or process competing with the model for 2 cores
    measured 35% slower steps."""

    def __init__(self, paths: list[str], roi_size, seg: SegConfig, batch_size: int, seed: int, rank: int,
                 label_pairs: LabelPairs = ()):
        self.transform = train_transforms(roi_size, seg, label_pairs)
        self.dataset = CacheDataset([{"path": p} for p in paths], self.transform, progress=False, copy_cache=False)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def __call__(self, step: int) -> dict:
        """The batch of step ``step`` (0-based: the step after a checkpoint at ``step``)."""
        self.transform.set_random_state(seed=step_seed(self.seed, self.rank, step, AUGMENT) % 2 ** 32)
        picks = batch_indices(len(self.dataset), self.batch_size, self.seed, self.rank, step)
        return list_data_collate([self.dataset[i] for i in picks])


def load_validation_case(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, *S) float32 image and (1, 1, *S) label of a cached case: the whole volume."""
    data = LoadCachedCased()({"path": path})
    return data["image"][None], data["label"][None]
