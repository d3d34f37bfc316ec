"""Resolve once: what the data and the storage decide is written into the config before any work."""
import json

import pytest

from swinray.config import (
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
    SweepConfig,
    apply_overrides,
    load_config,
    to_dict,
)
from swinray.data.phantom import write_phantom_dataset
from swinray.errors import ConfigError, DatasetError
from swinray.presets import preset
from swinray.resolve import resolve_finetune, resolve_pretrain, resolve_sweep, save


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "HeadCT"
    write_phantom_dataset(root, num_cases=2, shape=(64, 64, 32))
    return root


def finetune_config(dataset, tmp_path, **overrides) -> FinetuneConfig:
    return apply_overrides(preset(FinetuneConfig, "default"),
                           {"data.source": str(dataset), "run.storage": str(tmp_path / "runs"), **overrides})


def test_the_task_roi_channels_and_places_are_settled_from_the_data_and_the_storage(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("SWINRAY_AIM_REPO", raising=False)
    requested = finetune_config(dataset, tmp_path)
    assert (requested.data.task, requested.model.roi_size, requested.model.in_channels) == ("auto", (0, 0, 0), 0)
    resolved = resolve_finetune(requested, print)
    cfg = resolved.cfg
    assert cfg.data.task == "HeadCT" == resolved.dataset.task.name        # inferred: the folder's name
    assert cfg.model.roi_size == resolved.dataset.task.roi_size and all(cfg.model.roi_size)
    assert (cfg.model.in_channels, cfg.model.out_channels) == (1, 14)      # one CT channel; BTCV's 13 organs + 0
    assert (cfg.data.spacing_mm, cfg.data.window_hu) == (resolved.dataset.task.spacing_mm,    # the grid it trains on
                                                         resolved.dataset.task.window_hu) and all(cfg.data.spacing_mm)
    runs = (tmp_path / "runs").resolve()
    assert cfg.data.cache_dir == str(runs / "cache") and cfg.data.phantom_dir == str(runs / "phantom")
    assert cfg.run.aim_repo == str(runs) and cfg.run.experiment == cfg.run.name
    assert resolved.paths.run_dir == str(runs / cfg.run.name)
    assert resolved.paths.cache.startswith(str(runs / "cache" / "HeadCT-"))
    assert resolved.requested == requested


def test_resolving_a_resolved_config_changes_nothing_and_the_saved_one_reruns_as_it_ran(dataset, tmp_path):
    resolved = resolve_finetune(finetune_config(dataset, tmp_path, **{"seg.pretrained": "enc.pt"}), print)
    again = resolve_finetune(resolved.cfg, print)
    assert again.cfg == resolved.cfg and again.paths == resolved.paths
    saved = save(resolved)
    assert json.loads(saved.read_text()) == to_dict(resolved.cfg)
    assert json.loads((saved.parent / "config.requested.json").read_text())["model"]["roi_size"] == [0, 0, 0]
    assert resolve_finetune(load_config(FinetuneConfig, saved), print).cfg == resolved.cfg   # --config config.json
    assert resolved.cfg.seg.pretrained == str((tmp_path.cwd() / "enc.pt").resolve())      # as workers find it


def test_an_explicit_roi_and_channels_win_over_the_data(dataset, tmp_path):
    cfg = resolve_finetune(finetune_config(dataset, tmp_path, **{"model.roi_size": [64, 64, 32],
                                                                "model.out_channels": 14}), print).cfg
    assert cfg.model.roi_size == (64, 64, 32) and cfg.model.out_channels == 14


def test_a_task_name_that_is_neither_registered_nor_this_datas_own_is_refused(dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"unknown task 'HeadCTT'.*'HeadCT'"):
        resolve_finetune(finetune_config(dataset, tmp_path, **{"data.task": "HeadCTT"}), print)


def test_pretraining_takes_its_channels_from_the_data_and_its_experiment_from_its_name(dataset, tmp_path):
    cfg = resolve_pretrain(apply_overrides(preset(PretrainConfig, "debug"), {
        "data.source": str(dataset), "run.storage": str(tmp_path), "run.name": "ssl-1"}), print).cfg
    assert (cfg.model.in_channels, cfg.model.out_channels, cfg.run.experiment) == (1, 1, "ssl-1")
    assert cfg.model.roi_size == (64, 64, 64)                            # the preset's crop, not the task's


def test_a_sweep_resolves_its_fine_tuning_base_and_records_the_split_in_the_sweep_folder(dataset, tmp_path):
    sweep = apply_overrides(preset(SweepConfig, "debug"), {"finetune.data.source": str(dataset),
                                                           "storage": str(tmp_path / "sweeps")})
    resolved = resolve_sweep(sweep, print)
    assert resolved.cfg.finetune.data.task == "HeadCT" and all(resolved.cfg.finetune.model.roi_size)
    assert resolved.paths.run_dir == str((tmp_path / "sweeps" / "sweep-debug").resolve())
    assert resolved.paths.split == str((tmp_path / "sweeps" / "sweep-debug" / "split.json").resolve())


def test_a_run_saved_before_a_setting_existed_resumes_while_the_setting_does_what_that_run_did(dataset, tmp_path):
    resolved = resolve_finetune(finetune_config(dataset, tmp_path), print)
    saved = save(resolved)
    (saved.parent / "metrics.jsonl").write_text('{"step": 1}\n')
    older = json.loads(saved.read_text())
    for added in ("pretrained_lr_scale", "cpu_bf16", "tta_flips", "largest_component"):    # an older version's
        del older["seg"][added]
    saved.write_text(json.dumps(older))
    assert resolved.cfg.seg.tta_flips and resolved.cfg.seg.largest_component   # that run scored in one pass, raw:
    save(resolved)                                          # how the end-of-run test is scored may change; 1.0
                                                            # and float32 as it did
    scaled = resolve_finetune(apply_overrides(resolved.requested, {"seg.pretrained": str(tmp_path / "e.pt"),
                                                                   "seg.pretrained_lr_scale": 0.5}), print)
    with pytest.raises(ConfigError, match=r"seg\.pretrained_lr_scale: 1\.0 -> 0\.5"):
        save(scaled)
    saved.write_text(json.dumps({**older, "split": {k: v for k, v in older["split"].items() if k != "test_fraction"}}))
    with pytest.raises(ConfigError, match=r"split\.test_fraction: '\(not set\)'"):   # others still count
        save(resolved)


def test_a_run_whose_data_now_resolves_to_another_grid_is_refused_even_if_saved_before_grids_were(dataset, tmp_path):
    import torch
    resolved = resolve_finetune(finetune_config(dataset, tmp_path), print)
    saved = save(resolved)
    (saved.parent / "metrics.jsonl").write_text('{"step": 1}\n')
    ran = json.loads(saved.read_text())
    saved.write_text(json.dumps({**ran, "data": {**ran["data"], "spacing_mm": [4.054, 4.054, 2.5]},
                                 "model": {**ran["model"], "roi_size": [96, 64, 96]}}))
    with pytest.raises(ConfigError, match=r"data\.spacing_mm: \[4\.054, 4\.054, 2\.5\] -> .* with --set data\."
                                          r"spacing_mm=4\.054,4\.054,2\.5 --set model\.roi_size=96,64,96: its data"):
        save(resolved)                                     # e.g. the inferred task changed under a started run
    # an older version saved "the task's": its latest checkpoint's model.pt says what it trained on
    unresolved = json.dumps({**ran, "data": {**ran["data"], "spacing_mm": [0.0] * 3, "window_hu": [0.0] * 2}})
    saved.write_text(unresolved)
    said = []
    save(resolved, log=said.append)                        # no checkpoint: nothing to compare with, and it says so
    assert len(said) == 1 and "data.spacing_mm, data.window_hu" in said[0] and "resumes on the grid" in said[0]
    checkpoint = saved.parent / "checkpoint_2026-12-01_00-00-00.000000"
    checkpoint.mkdir()
    torch.save({"task": {**to_dict(resolved.dataset.task), "spacing_mm": [4.054, 4.054, 2.5]}}, checkpoint / "model.pt")
    saved.write_text(unresolved)
    with pytest.raises(ConfigError, match=r"data\.spacing_mm: \[4\.054, 4\.054, 2\.5\] -> "):
        save(resolved)
    torch.save({"task": to_dict(resolved.dataset.task)}, checkpoint / "model.pt")
    saved.write_text(unresolved)
    said.clear()
    save(resolved, log=said.append)                        # trained on the grid it resolves to now
    assert said == []
    saved.write_text("{ not json")                         # unreadable: every setting is "(not set)", named
    with pytest.raises(ConfigError, match=r"data\.spacing_mm: '\(not set\)' -> .*--config [^,]*\)$"):
        save(resolved)


def test_a_sweep_saved_before_test_time_flips_and_post_processing_resumes(dataset, tmp_path):
    sweep = resolve_sweep(apply_overrides(preset(SweepConfig, "debug"), {"finetune.data.source": str(dataset),
                                                                         "storage": str(tmp_path / "sweeps")}), print)
    saved = save(sweep)
    (saved.parent / "tune").mkdir()
    older = json.loads(saved.read_text())
    del older["finetune"]["seg"]["tta_flips"], older["finetune"]["seg"]["largest_component"]
    saved.write_text(json.dumps(older))
    save(sweep)                                             # only the best trial's test score uses them


def test_a_rerun_under_the_same_name_may_go_on_longer_but_not_with_other_settings(dataset, tmp_path):
    resolved = resolve_finetune(finetune_config(dataset, tmp_path), print)
    saved = save(resolved)
    fixed = resolve_finetune(apply_overrides(resolved.requested, {"optim.lr": 2e-3}), print)
    assert json.loads(save(fixed).read_text())["optim"]["lr"] == 2e-3      # never started: a fix is no rerun
    saved = save(resolved)
    (saved.parent / "metrics.jsonl").write_text('{"step": 1}\n')           # now it has started
    longer = resolve_finetune(apply_overrides(resolved.requested, {"optim.num_steps": 4000}), print)
    assert json.loads(save(longer).read_text())["optim"]["num_steps"] == 4000          # it goes on to 4000
    other = resolve_finetune(apply_overrides(resolved.requested, {"optim.lr": 3e-4}), print)
    with pytest.raises(ConfigError, match=r"already holds a run of this name.*optim\.lr: 0\.001 -> 0\.0003"):
        save(other)
    assert json.loads(saved.read_text())["optim"]["lr"] == 1e-3                        # never overwritten


def test_relative_outputs_never_land_in_a_ray_jobs_working_dir_which_ray_deletes(tmp_path, monkeypatch):
    from swinray.resolve import output_path, output_root_note
    monkeypatch.delenv("SWINRAY_STORAGE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert output_path("outputs") == str(tmp_path / "outputs") and not output_root_note()   # a plain shell
    package = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)                                      # as `ray job submit --working-dir .` runs
    assert output_path("outputs/debug") == str(tmp_path / "home" / "swinray" / "outputs" / "debug")
    assert "Ray deletes" in output_root_note() and output_path("/abs/runs") == "/abs/runs"
    monkeypatch.setenv("SWINRAY_STORAGE", "s3://lab/shared")       # a cluster's shared storage
    assert output_path("outputs") == "s3://lab/shared/outputs" and not output_root_note()


def test_a_runs_config_json_given_to_config_restarts_from_its_request(dataset, tmp_path):
    """Rerun as it ran, or on other data, resolved afresh: never the old data's task forced onto new data."""
    from swinray.cli import starting_config
    resolved = resolve_finetune(finetune_config(dataset, tmp_path), print)
    saved = save(resolved)
    start = starting_config(FinetuneConfig, saved)
    assert start == resolved.requested and start.data.task == "auto"
    assert resolve_finetune(start, print).cfg == resolved.cfg
    loose = tmp_path / "best_config.json"                  # a resolved file with no request beside it
    loose.write_text(saved.read_text())
    assert starting_config(FinetuneConfig, loose) == resolved.cfg


def test_data_spacing_and_window_replace_the_tasks_and_so_make_another_cache():
    from swinray.data.cache import preprocessing_settings
    from swinray.data.tasks import get_task
    from swinray.resolve import task_with_overrides

    spleen = get_task("Task09_Spleen")
    assert task_with_overrides(spleen, DataConfig()) == spleen
    ours = task_with_overrides(spleen, DataConfig(spacing_mm=(4.0, 4.0, 2.5), window_hu=(-117.0, 1573.0)))
    assert (ours.spacing_mm, ours.window_hu) == ((4.0, 4.0, 2.5), (-117.0, 1573.0))
    assert preprocessing_settings(ours) != preprocessing_settings(spleen)
    with pytest.raises(ConfigError, match=r"data.window_hu=\[-100.0, 100.0\]: the data \(Task04_Hippocampus\) is MRI"):
        task_with_overrides(get_task("Task04_Hippocampus"), DataConfig(window_hu=(-100.0, 100.0)))
    with pytest.raises(ConfigError, match="window_hu="):
        DataConfig(window_hu=(100.0, -100.0))


def test_a_run_saved_before_phantom_shape_existed_resumes_whatever_shape_is_asked(dataset, tmp_path):
    """Only a phantom not yet written takes the shape: a started run reads the one it has."""
    resolved = resolve_finetune(finetune_config(dataset, tmp_path), print)
    saved = save(resolved)
    (saved.parent / "metrics.jsonl").write_text('{"step": 1}\n')
    ran = json.loads(saved.read_text())
    saved.write_text(json.dumps({**ran, "data": {k: v for k, v in ran["data"].items() if k != "phantom_shape"}}))
    save(resolve_finetune(apply_overrides(resolved.requested, {"data.phantom_shape": [64, 64, 32]}), print))

