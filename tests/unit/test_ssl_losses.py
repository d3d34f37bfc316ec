"""SSL losses: NT-Xent prefers identical views, is symmetric, and gathers negatives across ranks."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swinray.pretext.losses import nt_xent, ssl_loss


def test_nt_xent_is_lower_for_identical_views_and_symmetric():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    assert nt_xent(z1, z1.clone(), 0.5) < nt_xent(z1, z2, 0.5)
    assert torch.isclose(nt_xent(z1, z2, 0.5), nt_xent(z2, z1, 0.5))


def test_nt_xent_of_a_single_pair_has_no_negatives_and_is_zero():
    assert nt_xent(torch.randn(1, 4), torch.randn(1, 4), 0.5).item() == pytest.approx(0.0, abs=1e-6)


def outputs(batch, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    return tuple(t.requires_grad_(requires_grad) for t in (
        torch.randn(batch, 4, generator=g), torch.randn(batch, 16, generator=g),
        torch.randn(batch, 1, 4, 4, 4, generator=g)))


def test_each_weight_switches_its_term_and_the_total_is_the_weighted_sum():
    o1, o2 = outputs(4), outputs(4)
    batch = {"rot1": torch.tensor([0, 1, 2, 3]), "rot2": torch.tensor([3, 2, 1, 0]),
             "target1": torch.zeros(4, 1, 4, 4, 4), "target2": torch.ones(4, 1, 4, 4, 4)}
    total, parts = ssl_loss(o1, o2, batch, (1.0, 2.0, 3.0), 0.5)
    assert all(v > 0 for v in parts.values())
    assert total.item() == pytest.approx(parts["rot"] + 2 * parts["contrast"] + 3 * parts["recon"], rel=1e-5)
    for i, name in enumerate(("rot", "contrast", "recon")):
        weights = [1.0, 1.0, 1.0]
        weights[i] = 0.0
        total, parts = ssl_loss(o1, o2, batch, tuple(weights), 0.5)
        assert parts[name] == 0.0
        assert total.item() == pytest.approx(sum(v for k, v in parts.items() if k != name), rel=1e-5)


def _rank(rank, port, z1, z2, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    local1 = z1[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
    loss = nt_xent(local1, z2[rank * 2:(rank + 1) * 2], 0.5)
    loss.backward()
    results[rank] = (loss.item(), bool(local1.grad.abs().sum() > 0))
    dist.destroy_process_group()


def test_negatives_are_gathered_from_every_rank():
    """Mean of the two ranks' losses == the single-process loss on the concatenated batch."""
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(port, z1, z2, results), nprocs=2, join=True)
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=1e-5)
    assert results[0][1] and results[1][1]                        # gradients reach the local rows
