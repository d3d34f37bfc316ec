"""Bench figures from recorded logs: preprocessing throughput on equal cores, training step times."""
import pytest

from swinray.bench.preprocess import throughput
from swinray.bench.train import step_times


def test_the_preprocessing_headline_compares_equal_cores_and_counts_only_written_cases():
    timings = {"baseline_1_thread": [10.0, 10.0], "baseline_2_threads": [7.5, 7.5], "ours_warm": [5.0, 5.0]}
    figures = throughput(timings, cases=50, written=45, cold_s=15.0, equal_threads=2)
    assert figures["ours_warm_cases_per_s"] == pytest.approx(9.0)          # 100 cases in 10 s, 90% written
    assert figures["ratio_equal_cores"] == pytest.approx(9.0 / (100 / 15))  # against the 2-thread baseline
    assert figures["ratio_vs_one_thread_baseline"] == pytest.approx(9.0 / 5.0)
    assert figures["ratio_cold_equal_cores"] == pytest.approx(3.0 / (100 / 15), abs=1e-3)
    assert figures["round_ratios_equal_cores"] == [1.35, 1.35]                # per round, as pooled


def test_training_step_times_are_whole_intervals_between_log_stamps_after_the_warm_up():
    rows = [{"step": s, "time": t, "data_wait_fraction": 0.0}
            for s, t in enumerate([100.0, 101.0, 102.5, 104.0, 106.0, 107.0, 110.0], start=1)]
    times, measured = step_times(rows, num_steps=7)
    assert times == [1.5, 2.0, 1.0, 3.0]                                # steps 4 to 7, each from the previous stamp
    assert [r["step"] for r in measured] == [4, 5, 6, 7]


def test_only_the_last_runs_steps_count_when_a_log_holds_an_earlier_run():
    earlier = [{"step": s, "time": float(s)} for s in range(1, 4)]
    rows = earlier + [{"step": s, "time": 1000.0 + 2 * s} for s in range(1, 7)]
    times, measured = step_times(rows, num_steps=6)
    assert times == [2.0, 2.0, 2.0] and measured[0]["time"] == 1008.0
