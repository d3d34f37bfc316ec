"""Label-efficiency bench: arms, the per-run configs, statistics over seeds, reuse, the table and the plot."""
import json

import pytest

from swinray.bench import label_efficiency
from swinray.bench.label_efficiency import (
    ROW_FILE,
    _reuse_key,
    arms,
    bench_label_efficiency,
    held_out_images_in_pretraining,
    one_run,
    resolved_grid,
    reusable_row,
    run_config,
    same_run,
    settings_suffix,
)
from swinray.bench.label_efficiency_table import markdown_table, paired_difference, plot, summarise
from swinray.config import BenchConfig, ConfigError, FinetuneConfig, apply_overrides
from swinray.presets import preset

GRID = {"spacing_mm": [3.906, 3.906, 2.5], "window_hu": [-160.0, 240.0]}    # what a run's data resolved to


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


@pytest.fixture
def encoder(tmp_path):
    (tmp_path / "ssl-ct").mkdir()
    (tmp_path / "ssl-ct" / "encoder.pt").write_bytes(b"x")
    return str(tmp_path / "ssl-ct" / "encoder.pt")


def test_ssl_arm_settings_change_only_the_ssl_arms_and_name_them(tmp_path, encoder):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {
        "out_dir": str(tmp_path), "ssl_set": ["seg.pretrained_lr_scale=0.10", "seg.freeze_encoder_steps=20"]})
    (scratch, _), (name, file) = arms((encoder,), settings_suffix(cfg))
    assert name == "ssl-ct+pretrained_lr_scale=0.1+freeze_encoder_steps=20"   # apart from the plain arm's runs
    ssl, plain = run_config(cfg, name, file, 0.1, 0), run_config(cfg, scratch, "", 0.1, 0)
    assert (ssl.seg.pretrained_lr_scale, ssl.seg.freeze_encoder_steps) == (0.1, 20)
    assert plain == run_config(apply_overrides(cfg, {"ssl_set": []}), scratch, "", 0.1, 0)  # scratch rows reused


@pytest.mark.parametrize("setting, problem", [
    ("seg.no_such_key=1", "ssl_set: unknown key"),
    ("seg.pretrained_lr_scale=fast", "ssl_set: seg.pretrained_lr_scale: cannot read"),
    ("seg.pretrained_lr_scale=0", r"ssl_set=.*pretrained_lr_scale=0.0: must be a finite number above 0"),
    ("seg.freeze_encoder_stages=9", r"ssl_set=.*freeze_encoder_stages=9"),
    ("seg.pretrained_lr_scale", "ssl_set="),
    ("split.label_fraction=1.0", "split.label_fraction is the bench's to set"),    # no longer paired
    ("run.seed=7", "run.seed is the bench's to set"),
    ("seg.pretrained=/other/encoder.pt", "seg.pretrained is the bench's to set"),
    ("data.window_hu=-1000,1000", "data.window_hu is the bench's to set"),
    ("optim.num_steps=5000", "optim.num_steps is the bench's to set"),             # equal budgets
    ("seg.tta_flips=true", "seg.tta_flips is the bench's to set"),                  # scored alike
    ("seg.largest_component=true", "seg.largest_component is the bench's to set")])
def test_a_bad_ssl_arm_setting_fails_before_any_run_naming_it(tmp_path, encoder, setting, problem):
    with pytest.raises(ConfigError, match=problem):
        cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path / "bench"), "ssl_set": [setting],
                                                             "pretrained": [encoder]})
        bench_label_efficiency(cfg, log=lambda line: None)
    assert not (tmp_path / "bench" / "label_efficiency").exists()


def test_ssl_arm_settings_without_an_ssl_arm_are_refused(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path),
                                                         "ssl_set": ["seg.pretrained_lr_scale=0.1"]})
    with pytest.raises(ConfigError, match="no --pretrained file gives an SSL arm"):
        bench_label_efficiency(cfg, log=lambda line: None)


@pytest.mark.parametrize("fractions", [[], [0.0, 0.5], [1.5]])
def test_fractions_outside_zero_to_one_are_refused_when_the_config_is_read(fractions):
    with pytest.raises(ConfigError, match="fractions="):
        apply_overrides(BenchConfig(), {"fractions": fractions})


def test_the_arms_of_a_seed_differ_only_in_weights_and_seeds_change_cases_and_training(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"budget_steps": 50, "out_dir": str(tmp_path),
                                                         "patience_validations": 2})
    scratch, ssl = run_config(cfg, "scratch", "", 0.25, 1), run_config(cfg, "ssl", "/w/encoder.pt", 0.25, 1)
    assert scratch.optim.num_steps == ssl.optim.num_steps == 50                  # the cap
    assert scratch.seg.patience_validations == ssl.seg.patience_validations == 2
    assert (scratch.split, scratch.run.seed, scratch.model) == (ssl.split, ssl.run.seed, ssl.model)
    assert scratch.split.label_fraction == 0.25 and ssl.seg.pretrained == "/w/encoder.pt"
    assert scratch.run.name == "scratch-f0.25-s1" and ssl.run.storage == str(tmp_path / "label_efficiency")
    other = run_config(cfg, "scratch", "", 0.25, 2)
    assert (other.split.seed, other.run.seed) == (2, 2) and (scratch.split.seed, scratch.run.seed) == (1, 1)
    assert other.split.test_fraction == scratch.split.test_fraction        # the test cases do not move


def test_a_run_keeps_its_presets_data_settings_and_takes_the_benchs_data():
    cfg = apply_overrides(BenchConfig(), {"finetune_preset": "cpu-headneck-oar", "data.source": "/d/OAR",
                                          "data.limits.max_times_median": 8.0})
    run = run_config(cfg, "scratch", "", 0.1, 0)
    assert run.data.window_hu == preset(FinetuneConfig, "cpu-headneck-oar").data.window_hu != (0.0, 0.0)
    assert run.data.source == "/d/OAR" and run.data.limits.max_times_median == 8.0
    chosen = run_config(apply_overrides(cfg, {"data.window_hu": (-1000.0, 1000.0)}), "scratch", "", 0.1, 0)
    assert chosen.data.window_hu == (-1000.0, 1000.0)                 # what the bench asks for wins
    on_phantom = run_config(apply_overrides(BenchConfig(), {"finetune_preset": "cpu-hippocampus"}), "s", "", 1.0, 0)
    assert preset(FinetuneConfig, "cpu-hippocampus").data.task == "Task04_Hippocampus"
    assert (on_phantom.data.source, on_phantom.data.task) == ("", "auto")   # the preset's task is its data's
    debug = run_config(apply_overrides(BenchConfig(), {"finetune_preset": "debug"}), "s", "", 1.0, 0)
    assert (debug.data.num_phantom_cases, debug.data.cache_dir) == (8, "")      # the bench's, not the preset's


def test_a_run_is_measured_in_steps_not_the_presets_wall_time(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"finetune_preset": "cpu-headneck-oar",
                                                         "out_dir": str(tmp_path)})
    assert preset(FinetuneConfig, "cpu-headneck-oar").seg.max_minutes > 0
    assert run_config(cfg, "scratch", "", 0.1, 0).seg.max_minutes == 0.0     # a busy machine changes no row


def test_a_preset_whose_decay_follows_the_clock_is_run_on_its_steps(tmp_path):
    assert preset(FinetuneConfig, "cpu-headneck-oar").seg.schedule_within_max_minutes
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"finetune_preset": "cpu-headneck-oar",
                                                         "out_dir": str(tmp_path)})
    assert not run_config(cfg, "scratch", "", 0.1, 0).seg.schedule_within_max_minutes   # rows keyed as before


def test_the_paired_difference_has_a_student_t_interval_over_seeds():
    d = paired_difference({0: 0.80, 1: 0.82, 2: 0.84, 3: 0.9}, {0: 0.78, 1: 0.79, 2: 0.80})
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3                          # seed 3 has no scratch run
    assert d["mean"] == pytest.approx(0.03) and d["sd"] == pytest.approx(0.01)
    assert (d["low"], d["high"]) == (pytest.approx(0.03 - 4.3027 * 0.01 / 3 ** 0.5, abs=1e-5),
                                     pytest.approx(0.03 + 4.3027 * 0.01 / 3 ** 0.5, abs=1e-5))
    single = paired_difference({0: 0.8}, {0: 0.7})
    assert single["mean"] == pytest.approx(0.1) and single["low"] is None and single["sd"] is None


def rows():
    out = []
    for seed, (s, o) in enumerate([(0.70, 0.74), (0.72, 0.73), (0.71, 0.75)]):
        out += [{"arm": "scratch", "fraction": 0.1, "seed": seed, "test_dice": s, "training_cases": 7,
                 "train_bf16": True},
                {"arm": "ssl", "fraction": 0.1, "seed": seed, "test_dice": o, "training_cases": 7, "train_bf16": True}]
    out += [{"arm": "scratch", "fraction": 1.0, "seed": 0, "test_dice": 0.85, "training_cases": 73,
             "train_bf16": False},
            {"arm": "ssl", "fraction": 1.0, "seed": 0, "test_dice": None, "error": "RuntimeError: worker died"}]
    return out


def test_the_table_gives_mean_sd_per_cell_and_the_paired_difference_with_its_interval():
    cells = summarise(rows(), ["scratch", "ssl"])
    assert cells[0]["arms"]["scratch"]["mean"] == pytest.approx(0.71)
    assert cells[0]["differences"]["ssl"]["mean"] == pytest.approx(0.03)
    lines = markdown_table(cells, ["scratch", "ssl"]).splitlines()
    assert lines[0] == ("| fraction | training cases | scratch | ssl | ssl - scratch (95% CI) | failed runs | "
                        "test images seen in pretraining | training precision |")
    assert lines[2] == ("| 0.1 | 7 | 0.710 ± 0.010 (n=3) | 0.740 ± 0.010 (n=3) | +0.030 [-0.013, +0.073] (n=3) | 0 | 0 "
                        "| bf16 |")
    assert lines[3] == "| 1 | 73 | 0.850 (n=1) | - | - | 1 | 0 | float32 |"


def test_a_cell_whose_runs_trained_in_different_precisions_says_so():
    mixed = [{**r, "train_bf16": r["seed"] != 1} for r in rows() if r["fraction"] == 0.1]
    assert summarise(mixed, ["scratch", "ssl"])[0]["precision"] == "bf16 and float32"
    unknown = [{k: v for k, v in r.items() if k != "train_bf16"} for r in rows()]   # rows from before it was kept
    assert summarise(unknown, ["scratch", "ssl"])[0]["precision"] == "?"


def test_the_plot_is_a_png(tmp_path):
    path = plot(summarise(rows(), ["scratch", "ssl"]), ["scratch", "ssl"], "OAR", tmp_path / "curve.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _finished(row_file, key: dict, row: dict) -> None:
    """A finished run's folder as the bench leaves it: its row beside its checkpoints."""
    (row_file.parent / "checkpoint_000000").mkdir(parents=True, exist_ok=True)
    row_file.write_text(json.dumps({"config": key, "row": row}))


def test_a_finished_row_is_reused_only_while_its_run_config_is_unchanged(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path)})
    cfg = apply_overrides(cfg, {"data.source": str(tmp_path / "no-such-dataset")})
    run_cfg = run_config(cfg, "scratch", "", 0.1, 0)
    row_file = tmp_path / "label_efficiency" / run_cfg.run.name / ROW_FILE
    finished = {"arm": "scratch", "fraction": 0.1, "seed": 0, "run": run_cfg.run.name, "test_dice": 0.5}
    _finished(row_file, _reuse_key(run_cfg, GRID), finished)
    assert one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, GRID) == finished      # nothing ran
    longer = apply_overrides(run_cfg, {"optim.num_steps": run_cfg.optim.num_steps + 1})
    again = one_run(longer, {"run": run_cfg.run.name}, lambda *_: None, GRID)                 # runs, and fails here
    assert again["test_dice"] is None and "no-such-dataset" in again["error"]
    assert not row_file.exists() and len(list(row_file.parent.glob(f"{ROW_FILE}.superseded-*"))) == 1
    assert (row_file.parent / "checkpoint_000000").is_dir()       # the run's to resume, reuse or refuse
    coarser = {**GRID, "spacing_mm": [4.054, 4.054, 2.5]}       # the same request, now resolved to another grid
    _finished(row_file, _reuse_key(run_cfg, GRID), finished)
    assert "no-such-dataset" in one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, coarser)["error"]
    _finished(row_file, {k: v for k, v in _reuse_key(run_cfg, GRID).items() if k != "grid"},
              finished)                                        # saved before rows recorded their grid
    assert "no-such-dataset" in one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, GRID)["error"]


def test_a_run_storage_that_cannot_be_written_stops_the_bench_not_one_row(tmp_path):
    """A fault of the place (here a file where the bench's folder should be) is no run's failure:
    it ends the bench with the StorageError naming the place, where every later run would fail too."""
    from swinray.data.phantom import write_phantom_dataset
    from swinray.errors import StorageError
    write_phantom_dataset(tmp_path / "phantom", 4, seed=1, shape=(48, 48, 16))
    (tmp_path / "a_file").write_text("in the way")
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path / "a_file" / "bench"),
                                                         "data.source": str(tmp_path / "phantom")})
    run_cfg = run_config(cfg, "scratch", "", 0.1, 0)
    with pytest.raises(StorageError) as fault:
        one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, GRID)
    assert str(fault.value).startswith(f"cannot write to {tmp_path / 'a_file' / 'bench'}/") and \
        "not a directory" in str(fault.value)


def test_a_row_saved_before_a_setting_existed_is_reused_while_that_setting_is_at_its_default(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path)})
    key = _reuse_key(run_config(cfg, "scratch", "", 0.1, 0), GRID)
    older = json.loads(json.dumps(key))
    del older["seg"]["crop_class_ratios"], older["data"]["limits"]        # settings added after the row
    assert same_run(older, key)
    patient = _reuse_key(apply_overrides(run_config(cfg, "scratch", "", 0.1, 0),
                                         {"seg.crop_class_ratios": (1.0, 2.0)}), GRID)
    assert not same_run(older, patient)                      # a new setting away from its default changes the run
    assert not same_run(key, {**key, "encoder_sha256": "other"})


def test_every_run_is_scored_in_one_pass_and_raw_so_rows_from_before_flips_and_post_processing_are_reused(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path)})
    run_cfg = run_config(cfg, "scratch", "", 0.1, 0)
    assert run_cfg.seg.tta_flips is False and run_cfg.seg.largest_component is False   # the defaults are True
    key = _reuse_key(run_cfg, GRID)
    older = json.loads(json.dumps(key))
    del older["seg"]["tta_flips"], older["seg"]["largest_component"]   # a row scored before they existed
    assert same_run(older, key)
    for setting in ("seg.tta_flips", "seg.largest_component"):
        assert not same_run(older, _reuse_key(apply_overrides(run_cfg, {setting: True}), GRID))


def test_a_new_encoder_in_the_same_file_makes_new_rows(tmp_path):
    encoder = tmp_path / "encoder.pt"
    encoder.write_bytes(b"first")
    cfg = run_config(apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path)}), "ssl", str(encoder),
                     0.1, 0)
    before = _reuse_key(cfg, GRID)
    encoder.write_bytes(b"second")
    assert _reuse_key(cfg, GRID) != before


def test_test_images_the_encoder_was_pretrained_on_are_counted(tmp_path):
    (tmp_path / "ssl").mkdir()
    (tmp_path / "ssl" / "encoder.pt").write_bytes(b"x")
    (tmp_path / "ssl" / "split.json").write_text('{"training": ["OpenKBP_HN_CT-pt_1", "OpenKBP_HN_CT-pt_2"]}')
    (tmp_path / "split.json").write_text('{"training": ["pt_2"], "validation": [], "test": ["pt_1", "pt_11"]}')
    assert held_out_images_in_pretraining(str(tmp_path / "ssl" / "encoder.pt"), tmp_path / "split.json") == ["pt_1"]
    assert held_out_images_in_pretraining("", tmp_path / "split.json") == []


def test_an_ssl_row_is_reused_from_another_checkout_of_the_same_encoder_and_not_for_another_encoder(tmp_path):
    for folder, content in (("here", b"weights"), ("elsewhere", b"weights"), ("other", b"other weights")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "encoder.pt").write_bytes(content)
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path / "bench")})
    key = {folder: _reuse_key(run_config(cfg, "ssl", str(tmp_path / folder / "encoder.pt"), 0.1, 0), GRID)
           for folder in ("here", "elsewhere", "other")}
    assert key["here"]["seg"]["pretrained"] != key["elsewhere"]["seg"]["pretrained"]
    assert same_run(key["here"], key["elsewhere"])            # the same weights, copied or checked out elsewhere
    assert not same_run(key["here"], key["other"])            # other weights: the run is another


def test_the_table_is_rewritten_after_every_run_with_every_finished_row_so_a_study_stopped_midway_keeps_them(
        tmp_path, monkeypatch, encoder):
    """Runs finished in an earlier session count from the start, also those the loop has not reached
    when the study is stopped (here during its second run, the SSL arm at fraction 0.5)."""
    from swinray.data.phantom import write_phantom_dataset
    write_phantom_dataset(tmp_path / "phantom", 4, seed=1, shape=(48, 48, 16))
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path / "bench"), "seeds": 1,
                                                         "fractions": [0.5, 1.0], "pretrained": [encoder],
                                                         "data.source": str(tmp_path / "phantom")})
    grid = resolved_grid(run_config(cfg, "scratch", "", 0.5, 0), lambda *_: None)
    for arm, file, fraction, dice in (("scratch", "", 0.5, 0.60), ("scratch", "", 1.0, 0.80),
                                      ("ssl-ct", encoder, 1.0, 0.83)):
        run_cfg = run_config(cfg, arm, file, fraction, 0)
        _finished(tmp_path / "bench" / "label_efficiency" / run_cfg.run.name / ROW_FILE, _reuse_key(run_cfg, grid),
                  {"arm": arm, "fraction": fraction, "seed": 0, "run": run_cfg.run.name, "test_dice": dice,
                   "training_cases": 1})

    def stopped(run_cfg, log):          # the fault: the study is stopped during the run it has to train
        raise KeyboardInterrupt
    monkeypatch.setattr(label_efficiency, "run_finetune", stopped)
    with pytest.raises(KeyboardInterrupt):
        bench_label_efficiency(cfg, log=lambda *_: None)
    saved = json.loads((tmp_path / "bench" / "label_efficiency.json").read_text())
    assert (saved["runs"], saved["runs_planned"], saved["ok"]) == (3, 4, False)
    assert (tmp_path / "bench" / "label_efficiency.md").read_text().splitlines()[2:] == [
        "| 0.5 | 1 | 0.600 (n=1) | - | - | 0 | 0 | ? |",
        "| 1 | 1 | 0.800 (n=1) | 0.830 (n=1) | +0.030 (one seed: no interval) (n=1) | 0 | 0 | ? |"]
    assert (tmp_path / "bench" / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_a_row_file_of_this_run_that_is_not_whole_is_a_failed_row_naming_it_not_the_end_of_the_study(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path)})
    run_cfg = run_config(cfg, "scratch", "", 0.1, 0)
    row_file = tmp_path / "label_efficiency" / run_cfg.run.name / ROW_FILE
    _finished(row_file, _reuse_key(run_cfg, GRID), {"arm": "scratch", "fraction": 0.1})     # edited by hand
    assert reusable_row(run_cfg, GRID) is None          # the bench's look-ahead leaves it out
    failed = one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, GRID)
    assert failed["test_dice"] is None and str(row_file) in failed["error"] and "not a whole one" in failed["error"]
    assert row_file.is_file()                           # left for the user to look at
