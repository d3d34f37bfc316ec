"""One training step's forward and backward, shared by the training loops and ``bench gpu``, so the
benchmark times the code that trains and a CPU test reaches its GPU branches (bf16 autocast and
gradient checkpointing both run on a CPU)."""
from __future__ import annotations

import torch

from swinray.config import PretextConfig
from swinray.pretext.losses import ssl_loss
from swinray.pretext.views import make_ssl_batch


def pretext_weights(pretext: PretextConfig) -> tuple[float, float, float]:
    return pretext.rotation_weight, pretext.contrastive_weight, pretext.reconstruction_weight


def ssl_forward_backward(model: torch.nn.Module, crop: torch.Tensor, pretext: PretextConfig,
                         generator: torch.Generator, use_amp: bool, accumulation: int = 1):
    """Two views of ``crop`` (B, C, *roi) through the SSL head in one pass, the three losses, and
    ``loss / accumulation`` backpropagated (``accumulation``: gradient-accumulation steps).
    Returns (loss, its parts, the views batch, the outputs split per view)."""
    batch = make_ssl_batch(crop, pretext.cutout_max_fraction, generator)
    with torch.autocast(crop.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(torch.cat([batch["view1"], batch["view2"]]))
        halves = [tuple(t.float().chunk(2)) for t in out]
        loss, parts = ssl_loss(tuple(h[0] for h in halves), tuple(h[1] for h in halves),
                               batch, pretext_weights(pretext), pretext.temperature)
    (loss / accumulation).backward()
    return loss, parts, batch, halves


def seg_forward_backward(model: torch.nn.Module, loss_fn, image: torch.Tensor, label: torch.Tensor,
                         use_amp: bool) -> torch.Tensor:
    """Segmentation logits under bf16 autocast (when ``use_amp``), the loss in float32, backpropagated."""
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss = loss_fn(model(image).float(), label)
    loss.backward()
    return loss
