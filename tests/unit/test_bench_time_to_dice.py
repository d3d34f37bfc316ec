"""Time-to-Dice bench: the baseline's log, our metrics log, and the time each side takes to the target."""
import pytest

from swinray.bench.time_to_dice import compare, curve_of_run, parse_baseline

# Printed by ../shared/baselines/hippo_monai_baseline.py (abridged): an epoch line before each epoch's
# validation, a validation every 2 epochs, and FINAL with train_s (training stopped) and eval_s (the final
# evaluation after it).
BASELINE_LOG = """\
epoch 1 step 83 t=410s loss=1.204
epoch 2 step 166 t=820s loss=0.913
val dice [0.61, 0.55]
epoch 3 step 249 t=1290s loss=0.802
epoch 4 step 332 t=1700s loss=0.777
val dice [0.74, 0.66]
FINAL steps=340 train_s=1745 eval_s=60 dice_ant_post=[0.72, 0.66] mean=0.6900
""".splitlines()


def test_each_baseline_dice_counts_from_when_its_evaluation_ended_and_the_final_one_is_charged_once():
    curve, final = parse_baseline(BASELINE_LOG)
    assert final["t_s"] == 1745 + 60 and final["dice"] == 0.69       # train_s excludes the final evaluation
    assert [p["step"] for p in curve] == [166, 332, 340]
    assert [p["t_s"] for p in curve] == [820 + 60, 1700 + 60, 1805]  # each validation costs what the final one took
    assert curve[1]["dice"] == pytest.approx(0.70)


def test_a_log_without_final_has_no_result():
    assert parse_baseline(BASELINE_LOG[:-1]) == ([], {})


def test_each_side_is_timed_to_its_first_dice_at_the_target():
    curve, final = parse_baseline(BASELINE_LOG)
    ours = curve_of_run([{"step": 150, "loss": 0.5, "elapsed_s": 170.0, "val_dice": 0.66},
                         {"step": 200, "loss": 0.4, "elapsed_s": 200.0},
                         {"step": 300, "loss": 0.4, "elapsed_s": 340.0, "val_dice": 0.72},
                         {"step": 450, "loss": 0.3, "elapsed_s": 520.0, "val_dice": 0.80}])
    assert [p["step"] for p in ours] == [150, 300, 450]
    figures = compare(curve, final, ours)
    # The baseline first reached its final 0.69 at its epoch-4 validation (0.70), before the end
    assert figures["target_dice"] == 0.69 and figures["baseline_seconds_to_target"] == 1760
    assert figures["ours_seconds_to_target"] == 340.0
    assert figures["time_to_target_ratio"] == round(1760 / 340, 2)
    assert figures["baseline_seconds_total"] == 1805


def test_a_side_that_never_reaches_the_target_has_no_ratio():
    curve, final = parse_baseline(BASELINE_LOG)
    figures = compare(curve, final, [{"t_s": 100.0, "step": 10, "dice": 0.5}])
    assert figures["ours_seconds_to_target"] is None and figures["time_to_target_ratio"] is None


def test_a_dice_equal_to_the_target_at_its_printed_precision_reaches_it():
    curve, final = parse_baseline(BASELINE_LOG)
    figures = compare(curve, final, [{"t_s": 100.0, "step": 10, "dice": 0.68996}])     # 0.6900 to 4 decimals
    assert figures["ours_seconds_to_target"] == 100.0
