"""``ranks_agree``: true when every rank holds the same weights, false when one rank's differ,
even by one element or by a swap that keeps the sum."""
import torch
import torch.distributed as dist

from conftest import run_gloo_ranks
from swinray.train.trainer import ranks_agree

WORLD = 2


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
        original = {k: v.clone() for k, v in net.state_dict().items()}
        results = [ranks_agree(net)]
        with torch.no_grad():
            if rank == 1:
                net[0].weight[0, 0] += 1e-6                      # one element, barely
        results.append(ranks_agree(net))
        net.load_state_dict(original)
        with torch.no_grad():
            if rank == 1:
                w = net[1].weight
                w[0, 0], w[0, 1] = w[0, 1].clone(), w[0, 0].clone()   # same sum, same sum of squares
        results.append(ranks_agree(net))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_identical_replicas_agree_and_any_difference_is_caught(tmp_path):
    run_gloo_ranks(_rank_main, (str(tmp_path / "store"), str(tmp_path)), WORLD)
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) == [True, False, False]


def test_a_single_process_agrees_with_itself():
    assert ranks_agree(torch.nn.Linear(3, 3)) is True
