"""SSL losses: NT-Xent is SimCLR's loss, prefers identical views, is symmetric and takes its negatives
from every rank; each ssl_loss weight switches its term, and the total is the weighted sum."""
import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from conftest import run_gloo_ranks
from swinray.pretext.losses import nt_xent, ssl_loss


def embeddings(seed: int, batch: int = 8, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def simclr_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent as cross-entropy over cosine similarities: row i's positive is its other view."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, positives)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_is_simclrs_loss(temperature):
    z1, z2 = embeddings(0)
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(simclr_reference(z1, z2, temperature).item(), rel=1e-5)


def test_nt_xent_is_lower_for_identical_views_and_symmetric():
    z1, z2 = embeddings(1)
    assert nt_xent(z1, z1.clone(), 0.5) < nt_xent(z1, z2, 0.5)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(nt_xent(z2, z1, 0.5).item(), rel=1e-6)


def test_nt_xent_of_a_single_pair_is_zero_and_finite():
    z1, z2 = embeddings(2, batch=1)
    loss = nt_xent(z1, z2, 0.5)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(0.0, abs=1e-6)   # no negatives


def test_nt_xent_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="pretext.temperature=0"):
        nt_xent(*embeddings(3), 0.0)


def head_outputs(seed: int, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, generator=g), torch.randn(batch, 16, generator=g),
            torch.randn(batch, 1, 4, 4, 4, generator=g))


BATCH = {"rot1": torch.tensor([0, 1, 2, 3]), "rot2": torch.tensor([3, 2, 1, 0]),
         "target1": torch.zeros(4, 1, 4, 4, 4), "target2": torch.ones(4, 1, 4, 4, 4)}


def test_the_total_is_the_weighted_sum_of_the_parts():
    total, parts = ssl_loss(head_outputs(1), head_outputs(2), BATCH, (0.5, 2.0, 3.0), 0.5)
    assert set(parts) == {"rot", "contrast", "recon"} and all(v > 0 for v in parts.values())
    expected = 0.5 * parts["rot"] + 2.0 * parts["contrast"] + 3.0 * parts["recon"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("off, output", [("rot", 0), ("contrast", 1), ("recon", 2)])
def test_a_zero_weight_switches_its_term_off_without_computing_it(off, output):
    o1, o2 = list(head_outputs(1)), list(head_outputs(2))
    o1[output] = torch.full_like(o1[output], float("nan"))      # would poison the total if computed
    weights = tuple(0.0 if name == off else 1.0 for name in ("rot", "contrast", "recon"))
    total, parts = ssl_loss(tuple(o1), tuple(o2), BATCH, weights, 0.5)
    assert parts[off].item() == 0.0
    assert math.isfinite(total.item())
    assert total.item() == pytest.approx(sum(v.item() for k, v in parts.items() if k != off), rel=1e-6)


def test_switching_every_task_off_is_an_error():
    with pytest.raises(ValueError, match="at least one task"):
        ssl_loss(head_outputs(1), head_outputs(2), BATCH, (0.0, 0.0, 0.0), 0.5)


ROWS_PER_RANK, WORLD = 3, 2


def _rank_main(rank: int, init_file: str, z1: torch.Tensor, z2: torch.Tensor, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        local1, local2 = z1[rows].clone().requires_grad_(True), z2[rows].clone().requires_grad_(True)
        with warnings.catch_warnings(record=True) as caught:   # workers' warnings flood job logs
            warnings.simplefilter("always")
            loss = nt_xent(local1, local2, 0.5)
            loss.backward()
        torch.save({"loss": loss.detach(), "grad1": local1.grad, "grad2": local2.grad,
                    "warnings": [str(w.message) for w in caught],
                    "local_only": nt_xent(local1.detach(), local2.detach(), 0.5, gather=False)},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.barrier()                  # neither rank tears gloo down while the other is still in a collective
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_with_two_ranks_each_rank_gets_the_global_batch_loss_and_gradients_reach_its_rows(tmp_path):
    z1, z2 = embeddings(4, batch=ROWS_PER_RANK * WORLD, dim=16)
    run_gloo_ranks(_rank_main, (str(tmp_path / "store"), z1, z2, str(tmp_path)), WORLD)

    g1, g2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    single = nt_xent(g1, g2, 0.5)                       # one process, the concatenated global batch
    single.backward()
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        assert result["loss"].item() == pytest.approx(single.item(), rel=1e-5)
        assert result["local_only"].item() != pytest.approx(single.item(), rel=1e-3)
        # Every rank's identical loss sends gradient to every row, so each rank holds WORLD times
        # the global gradient of its rows; DDP's mean over ranks turns that into the exact gradient.
        assert torch.allclose(result["grad1"], WORLD * g1.grad[rows], rtol=1e-4, atol=1e-6)
        assert torch.allclose(result["grad2"], WORLD * g2.grad[rows], rtol=1e-4, atol=1e-6)
        assert result["grad1"].abs().sum() > 0
        assert result["warnings"] == []
