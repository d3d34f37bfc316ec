"""Sweep bench: each arm's budget counts every worker's samples; ratios per seed, with mean and spread."""
import pytest

from swinray.bench.sweep import arm_config, compare_seeds
from swinray.config import BenchConfig, FinetuneConfig, apply_overrides
from swinray.presets import preset


def test_an_arm_budget_counts_the_samples_of_all_workers_and_the_seed_sets_sampler_and_training(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"budget_steps": 10, "out_dir": str(tmp_path)})
    arm = arm_config(cfg, "tpe", "asha", seed=4)
    base = arm.finetune
    assert base.run.num_workers == 2 and base.optim.batch_size == 1
    assert arm.trial_samples == 10 * 1 * 2
    assert arm.seed == base.run.seed == 4 and arm.name == "bench-tpe-asha-seed4"
    assert base.split.seed == 0                                          # one split for every seed
    assert base.seg.tta_flips is False                # best trials' test scores in one pass, as the table's


def test_an_arm_keeps_its_presets_ct_window_on_the_benchs_data_and_counts_samples_not_minutes():
    cfg = apply_overrides(BenchConfig(), {"finetune_preset": "cpu-headneck-oar", "data.source": "/d/OAR"})
    base = arm_config(cfg, "tpe", "asha", seed=0).finetune
    assert base.data.window_hu == preset(FinetuneConfig, "cpu-headneck-oar").data.window_hu != (0.0, 0.0)
    assert base.data.source == "/d/OAR" and base.seg.max_minutes == 0.0


def arms(ours_dice, ours_samples, random_dice, random_samples, test=None):
    return {"tpe+asha": {"best_val_dice": ours_dice, "best_test_dice": test, "trial_samples": ours_samples,
                         "trial_steps": ours_samples},
            "random+none": {"best_val_dice": random_dice, "best_test_dice": test, "trial_samples": random_samples,
                            "trial_steps": random_samples}}


def test_ratios_are_given_per_seed_and_as_mean_and_sample_spread():
    figures = compare_seeds([{"seed": 0, "arms": arms(0.80, 100, 0.80, 200, test=0.7)},
                             {"seed": 1, "arms": arms(0.84, 150, 0.80, 200, test=0.8)},
                             {"seed": 2, "arms": arms(0.76, 50, 0.80, 200)}])
    assert [r["dice_ratio"] for r in figures["per_seed"]] == pytest.approx([1.0, 1.05, 0.95])
    assert figures["dice_ratio"]["mean"] == pytest.approx(1.0) and figures["dice_ratio"]["sd"] == pytest.approx(0.05)
    assert figures["samples_ratio"]["mean"] == pytest.approx(0.5) and figures["samples_ratio"]["n"] == 3
    assert figures["tpe+asha_best_test_dice"] == {"mean": 0.75, "sd": pytest.approx(0.0707, abs=1e-4), "n": 2}
    assert figures["target_met"] and not figures["single_seed"]


def test_a_single_seed_says_so_and_has_no_spread():
    figures = compare_seeds([{"seed": 0, "arms": arms(0.70, 100, 0.80, 300)}])
    assert figures["single_seed"] and figures["dice_ratio"]["sd"] is None
    assert not figures["target_met"]                              # 0.875x the Dice misses the 0.99x target


def test_an_arm_without_a_scored_trial_has_no_ratio_and_misses_the_target():
    figures = compare_seeds([{"seed": 0, "arms": arms(None, 100, 0.80, 300)}])
    assert figures["per_seed"][0]["dice_ratio"] is None and figures["dice_ratio"]["mean"] is None
    assert not figures["target_met"]
