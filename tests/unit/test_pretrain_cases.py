"""Pretraining's case list: a resumed run keeps the cases it started with, so its redone steps replay."""
import json

from swinray.train.pretrain import training_cases


def test_a_new_run_trains_on_every_cached_case(tmp_path):
    assert training_cases(tmp_path / "split.json", ["a", "b", "c"]) == ["a", "b", "c"]


def test_a_resumed_run_keeps_its_cases_when_more_were_cached_since(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"training": ["a", "c"]}))
    said = []
    assert training_cases(split, ["a", "b", "c", "d"], said.append) == ["a", "c"]
    assert "resuming on the 2 case(s) the run started with (2 cached since" in said[0]


def test_a_resumed_run_whose_cases_are_gone_goes_on_with_the_cache_and_warns(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"training": ["a", "x"]}))
    said = []
    assert training_cases(split, ["a", "b"], said.append) == ["a", "b"]
    assert said[0].startswith("warning:") and "no longer cached" in said[0]
