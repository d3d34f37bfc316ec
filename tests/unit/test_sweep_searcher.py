"""The sweep's Optuna searcher: errored and NaN trials end FAIL in the study, never RUNNING or COMPLETE;
a small TPE sweep models its results after a few random trials instead of staying random."""
import optuna
import pytest

from swinray.search_spaces.common import SpaceContext
from swinray.sweep.budget import trial_budget
from swinray.sweep.run import TaskSpace
from swinray.sweep.searcher import export_study, make_searcher, startup_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def searcher():
    return make_searcher(TaskSpace("Task04_Hippocampus", SpaceContext(trial_budget(100, 3, 2))), "tpe", seed=0)


def states(searcher):
    return [t["state"] for t in export_study(searcher.study)]


def test_a_finished_trial_is_complete_with_its_dice(searcher):
    config = searcher.suggest("t1")
    assert "optim.lr" in config
    searcher.on_trial_result("t1", {"best_val_dice": 0.6, "training_iteration": 1})
    searcher.on_trial_complete("t1", {"best_val_dice": 0.7, "training_iteration": 2})
    assert states(searcher) == ["COMPLETE"] and export_study(searcher.study)[0]["value"] == 0.7


def test_an_errored_trial_fails_even_with_an_earlier_dice_in_its_last_result(searcher):
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"best_val_dice": 0.4, "training_iteration": 2}, error=True)
    assert states(searcher) == ["FAIL"]


def test_a_nan_dice_fails_the_trial_instead_of_leaving_it_running(searcher):
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"best_val_dice": float("nan"), "training_iteration": 1})
    searcher.on_trial_complete("t1", {"best_val_dice": float("nan"), "training_iteration": 1})
    assert states(searcher) == ["FAIL"]


def test_results_without_a_validation_dice_are_skipped(searcher):
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"loss": 0.3, "training_iteration": 1})   # no Dice in this report
    searcher.on_trial_result("t1", {"best_val_dice": -1.0, "training_iteration": 2})   # none measured yet
    assert states(searcher) == ["RUNNING"]


def test_the_same_seed_proposes_the_same_first_trial():
    configs = [make_searcher(TaskSpace("BTCV", SpaceContext(trial_budget(100, 3, 2))), "tpe", seed=3).suggest("t")
               for _ in range(2)]
    assert configs[0] == configs[1]


def proposals(search: str, trials: int) -> list[dict]:
    """The learning rates a sweep proposes first, each trial scoring 0.1 more Dice than the last."""
    space = TaskSpace("Task04_Hippocampus", SpaceContext(trial_budget(100, 3, 2)))
    searcher = make_searcher(space, search, seed=0, trials=trials)
    configs = []
    for n in range(4):
        configs.append(searcher.suggest(f"t{n}"))
        searcher.on_trial_complete(f"t{n}", {"best_val_dice": 0.5 + 0.1 * n, "training_iteration": 1})
    return [c["optim.lr"] for c in configs]


def test_a_small_tpe_sweep_stops_sampling_at_random_after_two_trials():
    assert startup_trials(6) == 2 and startup_trials(30) == 10 and startup_trials(100) == 10
    tpe, random = proposals("tpe", trials=6), proposals("random", trials=6)
    assert tpe[:2] == random[:2]            # the same seeded random start...
    assert tpe[2:] != random[2:]            # ...then TPE's own proposals
