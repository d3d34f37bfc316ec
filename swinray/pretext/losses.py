"""SSL losses of Tang et al. (CVPR 2022): rotation cross-entropy, NT-Xent, L1 reconstruction."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def _gathered(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """z from every rank (differentiably), and where this rank's rows start."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    return torch.cat(all_gather(z)), dist.get_rank() * z.shape[0]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020) between views z1, z2 (B, P); negatives from all ranks.

    Each rank scores its own rows against the global batch (embeddings all-gathered with
    gradients), so the mean of the ranks' losses is the loss of the global batch. Symmetric in
    (z1, z2).
    """
    g1, offset = _gathered(F.normalize(z1, dim=1))
    g2, _ = _gathered(F.normalize(z2, dim=1))
    n = g1.shape[0]   # with a global batch of 1 there are no negatives and the loss is 0
    everyone = torch.cat([g1, g2])                                   # (2N, P)
    rows = torch.cat([torch.arange(offset, offset + z1.shape[0]),
                      torch.arange(n + offset, n + offset + z1.shape[0])]).to(z1.device)
    logits = everyone[rows] @ everyone.T / temperature                # (2B, 2N)
    logits[torch.arange(len(rows)), rows] = float("-inf")             # never your own row
    positives = torch.where(rows < n, rows + n, rows - n)
    return F.cross_entropy(logits, positives)


def ssl_loss(outputs1, outputs2, batch: dict, weights: tuple[float, float, float],
             temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the three proxy losses; a weight of 0 skips its term.

    ``outputs*`` are (rotation logits, contrastive embedding, reconstruction) per view.
    """
    w_rot, w_con, w_rec = weights
    zero = outputs1[0].sum() * 0.0
    rot = (F.cross_entropy(outputs1[0], batch["rot1"]) + F.cross_entropy(outputs2[0], batch["rot2"])) / 2 \
        if w_rot else zero
    con = nt_xent(outputs1[1], outputs2[1], temperature) if w_con else zero
    rec = (F.l1_loss(outputs1[2], batch["target1"]) + F.l1_loss(outputs2[2], batch["target2"])) / 2 \
        if w_rec else zero
    total = w_rot * rot + w_con * con + w_rec * rec
    return total, {"rot": rot.item(), "contrast": con.item(), "recon": rec.item()}
