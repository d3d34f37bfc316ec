"""SSL losses of Tang et al., "Self-Supervised Pre-Training of Swin Transformers for 3D Medical
Image Analysis" (CVPR 2022): rotation cross-entropy, NT-Xent contrastive coding, L1 reconstruction.

Pure tensor code: the caller passes weights and the temperature from ``PretextConfig``.

    .venv/bin/python -m pytest tests/unit/test_ssl_losses.py -q
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from torch.distributed._functional_collectives import all_gather_single


def _global(z: torch.Tensor) -> torch.Tensor:
    """(B, P) on each rank -> (world * B, P), rank-major, differentiable (backward sums over ranks).

    The functional collective, not ``torch.distributed.nn.functional.all_gather``: that one is
    deprecated and warns on every step from every worker.
    """
    return all_gather_single(z.contiguous(), 0, dist.group.WORLD)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al., ICML 2020), the contrastive loss of Tang et al. (CVPR 2022).

    z1, z2: (B, P) embeddings of two views; row i of z1 and row i of z2 are the positive pair,
    every other row of either view is a negative. Cosine similarities are divided by the
    temperature (0.5 in the paper: lower values weigh hard negatives more; below about 0.012,
    exp(1 / temperature) overflows float32). Symmetric in (z1, z2); returns a scalar.

    When torch.distributed is initialised and ``gather`` is true, z1 and z2 are all-gathered
    with a differentiable all-gather (every rank must call
    this with the same B), so negatives come from the global batch and every rank returns the
    loss of that global batch. The gather's backward sums the identical losses of all ranks, so
    each rank's gradient is world_size times the global loss's gradient for its rows;
    DistributedDataParallel's averaging then yields exactly the global loss's gradient.

    With a global batch of one pair there are no negatives and the loss is 0 (finite).
    Computed by MONAI's ``ContrastiveLoss``, which is this loss, on the (gathered) embeddings.
    """
    if temperature <= 0:
        raise ValueError(f"pretext.temperature={temperature}: must be positive (the paper uses 0.5)")
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"nt_xent: expected two (B, P) embeddings of equal shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        z1, z2 = _global(z1), _global(z2)
    return ContrastiveLoss(temperature=temperature)(z1, z2)


def ssl_loss(outputs1: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             outputs2: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             batch: dict[str, torch.Tensor], weights: tuple[float, float, float],
             temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pretraining objective of Tang et al. (CVPR 2022): w_rot * L_rot + w_con * L_con + w_rec * L_rec.

    outputs1, outputs2: ``SSLHead`` outputs for ``batch["view1"]`` and ``batch["view2"]``:
    rotation logits (B, 4), contrastive embedding (B, P), reconstruction (B, C, X, Y, Z).
    batch: ``make_ssl_batch`` output (``rot1``, ``rot2``, ``target1``, ``target2`` are used).
    weights: (w_rot, w_con, w_rec); a weight of 0 switches its task off and the term is not
    computed (under torch.distributed every rank must use the same weights: NT-Xent gathers).

    L_rot is the cross-entropy of the rotation class over both views, L_con is ``nt_xent``
    between the views' embeddings, L_rec is the L1 distance of each reconstruction to its
    un-masked view over the whole volume (as the reference code), averaged over both views.
    Returns the total (scalar, differentiable) and the detached parts ``rot``, ``contrast`` and
    ``recon`` (0.0 for a switched-off term).
    """
    w_rot, w_con, w_rec = weights
    if not any(weights):
        raise ValueError("pretext.rotation_weight, contrastive_weight and reconstruction_weight are all 0: "
                         "at least one task must be on")
    zero = torch.zeros((), device=outputs1[0].device)
    terms: dict[str, torch.Tensor] = {}
    if w_rot:
        logits = torch.cat([outputs1[0], outputs2[0]])
        terms["rot"] = F.cross_entropy(logits.float(), torch.cat([batch["rot1"], batch["rot2"]]))
    if w_con:
        terms["contrast"] = nt_xent(outputs1[1].float(), outputs2[1].float(), temperature)
    if w_rec:
        recon = torch.cat([outputs1[2], outputs2[2]]).float()
        terms["recon"] = F.l1_loss(recon, torch.cat([batch["target1"], batch["target2"]]).float())
    scaled = [w * terms[name] for w, name in ((w_rot, "rot"), (w_con, "contrast"), (w_rec, "recon")) if w]
    total = torch.stack(scaled).sum()
    parts = {name: terms[name].detach() if name in terms else zero for name in ("rot", "contrast", "recon")}
    return total, parts
