"""A finished run is recognised from its latest checkpoint's metrics, as its workers would decide on
resuming it, and anything that cannot be read that way goes through Ray Train as before."""
import pytest

from swinray.config import FinetuneConfig, RunConfig, apply_overrides
from swinray.train.finetune_loop import finished_by, stop_cause
from swinray.train.trainer import finished_result

CFG = apply_overrides(FinetuneConfig(), {"optim.num_steps": 100, "seg.val_every_steps": 10,
                                         "seg.patience_validations": 3, "seg.max_minutes": 30})


@pytest.mark.parametrize("metrics, reason", [
    ({"step": 100, "best_step": 90, "elapsed_s": 60.0}, "num_steps"),
    ({"step": 40, "best_step": 10, "elapsed_s": 60.0}, "patience"),           # 3 validations past the best
    ({"step": 30, "best_step": 10, "elapsed_s": 60.0}, ""),                   # 2: more to do
    ({"step": 30, "best_step": 30, "elapsed_s": 1800.0}, "max_minutes"),
    ({"step": 2, "best_step": 0, "diverged_step": 2, "elapsed_s": 1.0}, "diverged"),
    ({"step": 4}, ""),                                                          # a checkpoint between validations
])
def test_a_checkpoints_metrics_say_whether_and_why_the_run_is_over(metrics, reason):
    assert finished_by(metrics, CFG) == reason


def test_settings_given_since_can_end_a_run_and_the_loops_own_reason_comes_first():
    unfinished = {"step": 50, "best_step": 50, "elapsed_s": 60.0, "stopped_by": ""}
    assert stop_cause(unfinished, CFG) == ""
    assert stop_cause(unfinished, apply_overrides(CFG, {"optim.num_steps": 50})) == "num_steps"
    assert stop_cause({**unfinished, "stopped_by": "max_minutes"}, CFG) == "max_minutes"


def test_no_run_folder_or_an_unreadable_snapshot_is_left_to_ray_train(tmp_path):
    run = RunConfig(name="r", storage=str(tmp_path))
    assert finished_result(run, lambda metrics: "num_steps") is None              # never ran
    (tmp_path / "r").mkdir()
    assert finished_result(run, lambda metrics: "num_steps") is None              # no checkpoint yet
    (tmp_path / "r" / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_results": [{"che')
    assert finished_result(run, lambda metrics: "num_steps") is None              # written half when it stopped
    assert finished_result(RunConfig(name="r", storage="s3://bucket/runs"), lambda metrics: "num_steps") is None
