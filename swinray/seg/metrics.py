"""Dice and HD95 per case with MONAI's metrics, and a Dice mean that all-reduces across workers.

Per case and class, as the reference BTCV code and the Decathlon score them: a class in the ground
truth gets its Dice; a class absent from both the ground truth and the prediction is not counted
(NaN); a class absent from the ground truth but predicted is a false positive and scores 0, counted.
HD95 is defined only where both sides hold the class: a missed class or a false positive has none
(NaN), and ``outcomes`` counts them so they are reported, never silently dropped. Each Ray Train
worker validates its share of the cases, so the sums and counts are all-reduced before dividing: the
reported number is the whole validation set's, exactly what one process would compute over every case.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *S) integer labels -> (B, num_classes, *S) float one-hot."""
    return one_hot(labels.long(), num_classes, dim=1)


def _present(one_hot_labels: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) one-hot -> (B, K - 1) whether each foreground class has a voxel."""
    return one_hot_labels[:, 1:].flatten(2).any(-1)


def dice_per_case(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, num_classes - 1) foreground Dice of (B, 1, *S) label maps: 0 for a false positive on a
    class absent from the truth, NaN (not counted) where both lack the class."""
    p, t = _one_hot(pred, num_classes), _one_hot(truth, num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)
    return dice.where(_present(p) | _present(t), torch.nan)


def outcomes(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """(B, num_classes - 1) flags per case and class: ``false_positive`` (predicted, absent from the
    truth) and ``missed`` (in the truth, predicted nowhere): where HD95 is undefined."""
    p, t = _present(_one_hot(pred, num_classes)), _present(_one_hot(truth, num_classes))
    return {"false_positive": p & ~t, "missed": t & ~p}


def hd95_per_case(pred: torch.Tensor, truth: torch.Tensor, num_classes: int,
                  spacing_mm: tuple[float, ...]) -> torch.Tensor:
    """(B, num_classes - 1) 95th-percentile Hausdorff distance in mm; NaN where either side lacks the class."""
    metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    return metric(_one_hot(pred, num_classes), _one_hot(truth, num_classes), spacing=list(spacing_mm))


class DiceMean:
    """Per-class mean Dice over cases, accumulated locally and all-reduced across workers."""

    def __init__(self, num_foreground: int):
        self.sums = torch.zeros(num_foreground, dtype=torch.float64)
        self.counts = torch.zeros(num_foreground, dtype=torch.float64)

    def add(self, dice: torch.Tensor) -> None:
        """Add (B, num_foreground) per-case Dice; NaN entries (class in neither) are not counted."""
        dice = dice.detach().to("cpu", torch.float64)
        valid = ~torch.isnan(dice)
        self.sums += torch.where(valid, dice, 0.0).sum(0)
        self.counts += valid.sum(0)

    def all_reduce(self, device: torch.device) -> None:
        """Sum over every worker of the process group (no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            both = torch.stack([self.sums, self.counts]).to(device)
            dist.all_reduce(both)
            self.sums, self.counts = both.cpu()

    def per_class(self) -> list[float]:
        return (self.sums / self.counts.clamp(min=1)).where(self.counts > 0, torch.nan).tolist()

    def mean(self) -> float:
        """Mean over foreground classes seen in any case (what the best checkpoint is chosen by)."""
        values = torch.tensor(self.per_class())
        values = values[~torch.isnan(values)]
        return float(values.mean()) if values.numel() else float("nan")
