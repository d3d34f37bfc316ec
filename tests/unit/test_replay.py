"""Per-step randomness: what a step draws depends on (seed, rank, step) alone, so a resumed run replays."""
import torch

from swinray.train.replay import batch_indices, seed_step, step_seed


def test_every_item_is_seen_once_per_epoch_in_an_order_that_changes_between_epochs():
    epochs = [[i for step in range(e * 5, (e + 1) * 5) for i in batch_indices(10, 2, 0, 0, step)] for e in range(3)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3


def test_a_steps_batch_does_not_depend_on_the_steps_drawn_before_it():
    straight = [batch_indices(7, 3, 5, 1, step) for step in range(12)]
    assert [batch_indices(7, 3, 5, 1, step) for step in range(8, 12)] == straight[8:]
    ranks = [[batch_indices(7, 3, 5, rank, step) for step in range(12)] for rank in (0, 1)]
    assert ranks[0] != ranks[1]                                       # each rank has its own order


def test_seeding_a_step_makes_global_draws_repeat_whatever_ran_before():
    seed_step(0, 0, 41)
    first = torch.rand(4)
    torch.rand(1000)                                                  # a run that drew much more in between
    seed_step(0, 0, 41)
    assert torch.equal(torch.rand(4), first)
    seed_step(0, 0, 42)
    assert not torch.equal(torch.rand(4), first)


def test_seeds_differ_across_streams_ranks_and_steps_and_fit_in_63_bits():
    seeds = {step_seed(s, r, k, stream) for s in (0, 7) for r in range(3) for k in range(50) for stream in range(5)}
    assert len(seeds) == 2 * 3 * 50 * 5 and max(seeds) < 2 ** 63
