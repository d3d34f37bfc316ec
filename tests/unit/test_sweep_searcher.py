"""The sweep's Optuna searcher: errored and NaN trials end FAIL in the study, never RUNNING or COMPLETE."""
import optuna
import pytest

from search_spaces.common import SpaceContext
from swinray.sweep.run import TaskSpace
from swinray.sweep.searcher import export_study, make_searcher

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def searcher():
    return make_searcher(TaskSpace("Task04_Hippocampus", SpaceContext(num_steps=100)), "tpe", seed=0)


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
    configs = [make_searcher(TaskSpace("BTCV", SpaceContext(num_steps=100)), "tpe", seed=3).suggest("t")
               for _ in range(2)]
    assert configs[0] == configs[1]
