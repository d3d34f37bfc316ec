"""A pretraining run says whether each proxy task was learned, from its metrics log."""
import json
import math

import pytest

from swinray.train.proxy_progress import describe, proxy_progress


def write_log(path, steps, rot, contrast, recon):
    """Losses falling linearly from (start, end) over ``steps`` steps."""
    def at(pair, i):
        return pair[0] + (pair[1] - pair[0]) * i / (steps - 1)
    lines = [json.dumps({"step": i + 1, "loss_rot": at(rot, i), "loss_contrast": at(contrast, i),
                         "loss_recon": at(recon, i)}) for i in range(steps)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_proxies_are_learned_when_rotation_halves_chance_and_the_others_fall_a_fifth(tmp_path):
    log = write_log(tmp_path / "metrics.jsonl", 300, rot=(1.45, 0.3), contrast=(2.0, 1.0), recon=(0.2, 0.1))
    progress = proxy_progress(log)
    assert progress["learned"]
    assert progress["rotation"]["first_50_mean"] == pytest.approx(1.45 - 1.15 * 24.5 / 299, abs=1e-3)
    assert progress["rotation"]["last_50_mean"] < math.log(4) / 2
    assert progress["contrast"]["drop"] > 0.2
    assert "learned" in describe(progress) and "NOT" not in describe(progress)


@pytest.mark.parametrize("rot, contrast, recon", [
    ((1.45, 1.38), (2.0, 1.0), (0.2, 0.1)),       # rotation stays at chance
    ((1.45, 0.3), (2.0, 1.8), (0.2, 0.1)),        # contrast falls by 10% only
    ((1.45, 0.3), (2.0, 1.0), (0.2, 0.19)),       # reconstruction barely moves
])
def test_one_proxy_left_unlearned_makes_the_run_not_learned(tmp_path, rot, contrast, recon):
    progress = proxy_progress(write_log(tmp_path / "metrics.jsonl", 300, rot, contrast, recon))
    assert progress["learned"] is False
    assert "NOT all learned" in describe(progress)


def test_steps_logged_twice_before_a_resume_count_once_and_a_cut_line_is_skipped(tmp_path):
    log = write_log(tmp_path / "metrics.jsonl", 200, rot=(1.4, 0.2), contrast=(2.0, 1.0), recon=(0.2, 0.1))
    redone = [json.dumps({"step": s, "loss_rot": 9.0, "loss_contrast": 9.0, "loss_recon": 9.0})
              for s in range(1, 51)]
    log.write_text("\n".join(redone) + "\n" + log.read_text() + '{"step": 201, "loss_r')
    progress = proxy_progress(log)
    assert progress["rotation"]["first_50_mean"] < 1.5        # the later line of each step won


def test_too_few_steps_to_judge_says_so(tmp_path):
    log = write_log(tmp_path / "metrics.jsonl", 99, rot=(1.4, 0.2), contrast=(2.0, 1.0), recon=(0.2, 0.1))
    assert proxy_progress(log) == {}
    assert "too few" in describe({})
