"""Progress on long commands: a bar on a terminal; off a terminal (CI, `ray job logs`) a plain line
every few seconds with counts, rate and time left. Distributed runs are followed from the driver
through rank 0's metrics log, restarts included."""
import json
import math
import pickle
import re
import time

from swinray.progress import Progress, follow_run
from swinray.sweep.progress import SweepProgress


def test_off_a_terminal_progress_is_a_line_every_interval_and_one_at_the_end(capsys):
    progress = Progress(total=5, unit="case", desc="preprocess", log_every_s=3600)
    for _ in range(5):
        progress.update()
    progress.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2                                               # the first, then only the last
    assert lines[0].startswith("[swinray] preprocess: 1/5 case,") and "s left" in lines[0]
    assert lines[1].startswith("[swinray] preprocess: 5/5 case,")
    assert "\r" not in err                                               # no bar redraws in a log


def test_time_left_is_the_clocks_when_a_time_limit_stops_the_work_before_its_count(capsys):
    """A preset sized in steps on a slower CPU: seg.max_minutes ends training long before the last step,
    and the time left says so rather than counting steps that will never run."""
    progress = Progress(total=10**6, unit="step", desc="finetune x", log_every_s=0)
    progress.set(1)
    time.sleep(0.05)                                             # at most 60 steps/s: >= 16,000 s by count
    progress.limit_time(10**9, "seg.max_minutes")
    progress.set(2)
    progress.limit_time(30, "seg.max_minutes")
    progress.set(3)
    resumed = Progress(total=10**6, unit="step", desc="finetune x", log_every_s=0, clock_from_first_update=True)
    resumed.limit_time(30, "seg.max_minutes")
    resumed.set(1)                                               # no rate yet: the clock bounds the time left
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].endswith(" s left") and "max_minutes" not in lines[1]     # the count comes first
    assert re.search(r"3/1000000 step, [0-9.]+ step/s, (29|30) s left \(seg.max_minutes\)$", lines[2])
    assert lines[3].endswith("1/1000000 step, at most 30 s left (seg.max_minutes)")


def test_a_followed_runs_time_limit_counts_from_its_latest_rows_elapsed_time_and_age(tmp_path, capsys):
    """A resumed run's log holds rows from before its restart: the clock is the latest row's (training
    time counted across resumes), less how long ago rank 0 wrote it (object storage is read late)."""
    for time_limit, desc in (((600.0, "seg.max_minutes"), "finetune x"), ((math.inf, ""), "pretrain x")):
        log = tmp_path / f"{desc}.jsonl"
        log.write_text(json.dumps({"step": 100, "loss": 1.0, "elapsed_s": 500.0, "time": time.time() - 900}) + "\n")
        with follow_run(log, total_steps=2800, desc=desc, poll_s=0.05, time_limit=time_limit) as progress:
            with log.open("a") as f:                             # written 3 s before the driver reads it
                f.write(json.dumps({"step": 101, "loss": 1.0, "elapsed_s": 590.0, "time": time.time() - 3}) + "\n")
            deadline = time.time() + 5
            while progress.done != 101 and time.time() < deadline:
                time.sleep(0.05)
    finetune, pretrain = capsys.readouterr().err.splitlines()
    left = re.search(r"101/2800 step, at most (\d+) s left \(seg.max_minutes\)", finetune)
    assert left and 5 <= int(left.group(1)) <= 7                 # 600 - 590 - 3
    assert pretrain.endswith("101/2800 step, time left unknown, loss 1.0000")    # no clock: none shown


def test_a_run_is_followed_through_its_metrics_log_including_a_restart(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")        # a resumed run: step 1 is done
    with follow_run(log, total_steps=4, desc="pretrain x", poll_s=0.05) as progress:
        assert progress.done == 1
        for step in (2, 3, 2, 3, 4):                                     # a restart from step 1's checkpoint
            with log.open("a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0 / step, "val_dice": 0.2 * step}) + "\n")
            time.sleep(0.15)
        deadline = time.time() + 5
        while progress.done != 4 and time.time() < deadline:
            time.sleep(0.05)
    assert progress.done == 4 and progress.figures == "loss 0.2500, val_dice 0.8000"
    assert capsys.readouterr().err.splitlines()[-1].startswith("[swinray] pretrain x: 4/4 step,")


def test_a_resumed_run_that_rewrites_its_log_counts_its_rate_from_where_it_resumed(tmp_path):
    """A resumed run rewrites its log up to its checkpoint (step 200 of the 267 logged): read again from
    step 1, those lines are not steps done in the last second, and the time left stays honest."""
    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 268)]
    log.write_text("".join(lines))
    with follow_run(log, total_steps=1600, desc="finetune x", poll_s=0.05) as progress:
        assert progress.done == 267
        log.write_text("".join(lines[:200]))                             # the rewrite, then a new step
        with log.open("a") as f:
            f.write(json.dumps({"step": 201, "loss": 0.5}) + "\n")
        deadline = time.time() + 5
        while progress.done != 201 and time.time() < deadline:
            time.sleep(0.05)
    assert progress.done == 201 and progress.since[1] >= 200             # the rate counts from the resume


def test_a_validation_read_with_the_steps_after_it_is_shown_with_them(tmp_path):
    """Object storage is read every few seconds: a read holds several steps, and the validation Dice
    among them is shown even when a training step came after it."""
    log = tmp_path / "metrics.jsonl"
    log.write_text("")
    with follow_run(log, total_steps=5, desc="finetune x", poll_s=0.05) as progress:
        written = tmp_path / "written.jsonl"                             # all at once: one read
        written.write_text("".join(json.dumps(row) + "\n" for row in (
            {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "val_dice": 0.3}, "not a row",
            {"step": 3, "loss": 1.2})))
        written.replace(log)
        deadline = time.time() + 5
        while progress.done != 3 and time.time() < deadline:
            time.sleep(0.05)
    assert progress.done == 3 and progress.figures == "loss 1.2000, val_dice 0.3000"


def test_a_run_whose_last_line_was_cut_short_is_followed_from_its_last_whole_step(tmp_path):
    """A full disk or a kill can leave the metrics log's last line without its newline; the rerun
    (which drops that line when it resumes) is followed from the step before, not ended by it."""
    log = tmp_path / "metrics.jsonl"
    whole = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2))
    log.write_text(whole + '{"step": 3, "lo')
    with follow_run(log, total_steps=4, desc="pretrain x", poll_s=0.05) as progress:
        assert progress.done == 2
        log.write_text(whole)                                            # the resumed run drops the cut line
        with log.open("a") as f:
            f.write(json.dumps({"step": 3, "loss": 0.5}) + "\n")
        deadline = time.time() + 5
        while progress.done != 3 and time.time() < deadline:
            time.sleep(0.05)
    assert progress.done == 3 and progress.figures == "loss 0.5000"


def test_a_note_from_the_workers_is_shown_once_though_a_restart_logs_it_again(tmp_path, capsys):
    """Workers' own output reaches the driver only with --verbose: what the user must know (training
    in float32 where bf16 was asked for) rides in a row of the metrics log."""
    log = tmp_path / "metrics.jsonl"
    log.write_text("")
    with follow_run(log, total_steps=3, desc="finetune x", poll_s=0.05) as progress:
        for row in ({"step": 1, "loss": 2.0, "note": "training stays float32"}, {"step": 2, "loss": 1.0},
                    {"step": 1, "loss": 2.0, "note": "training stays float32"}, {"step": 3, "loss": 0.5}):
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            time.sleep(0.15)
        deadline = time.time() + 5
        while progress.done != 3 and time.time() < deadline:
            time.sleep(0.05)
    notes = [line for line in capsys.readouterr().err.splitlines() if "float32" in line]
    assert notes == ["[swinray] finetune x: training stays float32"]


def test_a_sweeps_progress_callback_is_saved_with_the_experiment_without_its_bar(capsys):
    class Trial:
        def __init__(self, status):
            self.status = status

    callback = SweepProgress("sweep-x", trials=3)
    trials = [Trial("TERMINATED"), Trial("RUNNING"), Trial("PENDING")]
    callback.on_trial_result(0, trials, trials[1], {"val_dice": 0.42})
    assert callback._progress.done == 1 and "best val_dice 0.4200" in callback._progress.figures
    restored = pickle.loads(pickle.dumps(callback))                  # what Tune does with callbacks
    assert restored._progress is None and restored.best == 0.42
