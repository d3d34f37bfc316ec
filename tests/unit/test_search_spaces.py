"""Search spaces: every task's space samples valid fine-tuning configs; conditional SSL parameters."""
import optuna
import pytest

from swinray.config import FinetuneConfig, apply_overrides, field_types
from swinray.data.tasks import TASKS
from swinray.search_spaces import MODULES, space_for
from swinray.search_spaces.common import SpaceContext
from swinray.sweep.budget import trial_budget

optuna.logging.set_verbosity(optuna.logging.WARNING)
SETTABLE = set(field_types(FinetuneConfig))
BUDGET = trial_budget(600, reduction_factor=3, rungs=2)   # 9 validations 66 samples apart


def test_every_registry_task_has_its_own_space_module():
    assert set(MODULES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_space_samples_configs_that_fine_tuning_accepts(task):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    ctx = SpaceContext(BUDGET, pretrained="/w/encoder.pt")
    for _ in range(12):
        trial = study.ask()
        overrides = space_for(task)(trial, ctx)
        assert set(overrides) <= SETTABLE
        cfg = apply_overrides(FinetuneConfig(), overrides)
        assert 1e-5 <= cfg.optim.lr <= 1e-2 and 0 <= cfg.optim.warmup_steps <= cfg.optim.num_steps
        assert cfg.seg.pretrained in ("", "/w/encoder.pt")
        if not cfg.seg.pretrained:
            assert cfg.seg.freeze_encoder_steps == 0 and "seg.freeze_encoder_stages" not in trial.params
        study.tell(trial, 0.5)


def test_without_ssl_weights_no_trial_starts_from_them_or_freezes():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        overrides = space_for("Task04_Hippocampus")(trial, SpaceContext(trial_budget(100, 3, 2)))
        assert overrides["seg.pretrained"] == "" and overrides["seg.freeze_encoder_steps"] == 0
        assert "start_from_ssl" not in trial.params
        study.tell(trial, 0.5)


def test_task_overrides_narrow_the_shared_ranges():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    ratios = set()
    for _ in range(30):
        trial = study.ask()
        ratios.add(space_for("Task06_Lung")(trial, SpaceContext(trial_budget(100, 3, 2)))["seg.pos_neg_ratio"])
        study.tell(trial, 0.5)
    assert ratios == {2.0, 3.0, 5.0}


def test_every_trial_trains_on_the_same_samples_whatever_its_batch_size():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = {}
    for _ in range(20):
        trial = study.ask()
        cfg = apply_overrides(FinetuneConfig(), space_for("Task04_Hippocampus")(trial, SpaceContext(BUDGET)))
        batch = cfg.optim.batch_size
        seen[batch] = cfg.optim.num_steps * batch
        assert cfg.optim.num_steps == 9 * cfg.seg.val_every_steps                  # nine validations each
        assert 66 <= cfg.seg.val_every_steps * batch < 66 + batch                  # 66 samples apart, rounded up
        study.tell(trial, 0.5)
    assert sorted(seen) == [1, 2, 4] and seen == {1: 594, 2: 594, 4: 612}          # batch 4: 17 steps of 4


def test_a_step_of_two_workers_trains_on_twice_the_samples_so_it_takes_half_the_steps():
    one, two = trial_budget(600, 3, 2), trial_budget(600, 3, 2, workers=2)
    assert (one.val_every_steps(1), two.val_every_steps(1)) == (66, 33)
    assert two.num_steps(2) == 9 * 17 and two.samples == one.samples == 594
