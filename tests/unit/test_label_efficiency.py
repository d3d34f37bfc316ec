"""Label-efficiency bench: arms, fractions, the per-arm fine-tuning configs, the table and the plot."""
import pytest

from swinray.bench.label_efficiency import arms, markdown_table, plot, run_config
from swinray.config import BenchConfig, ConfigError, apply_overrides
from swinray.presets import preset


def test_scratch_comes_first_and_an_encoder_is_named_after_its_pretraining_run(tmp_path):
    (tmp_path / "ssl-ct").mkdir()
    (tmp_path / "ssl-ct" / "encoder.pt").write_bytes(b"x")
    (tmp_path / "model_swinvit.pt").write_bytes(b"x")
    names = [name for name, _ in arms((str(tmp_path / "ssl-ct" / "encoder.pt"), str(tmp_path / "model_swinvit.pt")))]
    assert names == ["scratch", "ssl-ct", "model_swinvit"]
    assert arms(())[0] == ("scratch", "")


def test_a_missing_encoder_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.pt: no such encoder file"):
        arms((str(tmp_path / "nope.pt"),))


@pytest.mark.parametrize("fractions", [[], [0.0, 0.5], [1.5]])
def test_fractions_outside_zero_to_one_are_refused_when_the_config_is_read(fractions):
    with pytest.raises(ConfigError, match="fractions="):
        apply_overrides(BenchConfig(), {"fractions": fractions})


def test_arms_differ_only_in_weights_and_fraction_with_the_budget_applied(tmp_path):
    cfg = preset(BenchConfig, "debug")
    cfg = type(cfg)(**{**cfg.__dict__, "budget_steps": 5, "out_dir": str(tmp_path)})
    scratch = run_config(cfg, "scratch", "", 0.25)
    ssl = run_config(cfg, "ssl", "/w/encoder.pt", 0.25)
    assert scratch.optim.num_steps == ssl.optim.num_steps == 5
    assert (scratch.split, scratch.run.seed, scratch.model) == (ssl.split, ssl.run.seed, ssl.model)
    assert scratch.split.label_fraction == 0.25 and ssl.seg.pretrained == "/w/encoder.pt"
    assert scratch.run.name == "scratch-f0.25" and ssl.run.storage == str(tmp_path / "label_efficiency")


ROWS = [
    {"arm": "scratch", "fraction": 0.1, "dice": 0.70, "dice_per_class": {"a": 0.71, "p": 0.69}, "training_cases": 17},
    {"arm": "ssl", "fraction": 0.1, "dice": 0.75, "dice_per_class": {"a": 0.76, "p": 0.74}, "training_cases": 17},
    {"arm": "scratch", "fraction": 1.0, "dice": 0.85, "dice_per_class": {"a": 0.86, "p": 0.84}, "training_cases": 166},
    {"arm": "ssl", "fraction": 1.0, "dice": None, "error": "RuntimeError: worker died"},
]


def test_the_table_shows_dice_per_class_and_the_gain_over_scratch():
    lines = markdown_table(ROWS, ["scratch", "ssl"]).splitlines()
    assert lines[0] == "| fraction | training cases | scratch | ssl | ssl - scratch |"
    assert lines[2] == "| 0.1 | 17 | 0.7000 (0.710, 0.690) | 0.7500 (0.760, 0.740) | +0.0500 |"
    assert lines[3] == "| 1 | 166 | 0.8500 (0.860, 0.840) | failed: RuntimeError: worker died | - |"


def test_the_plot_is_a_png(tmp_path):
    path = plot(ROWS, ["scratch", "ssl"], "Task04", tmp_path / "curve.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
