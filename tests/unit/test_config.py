"""Configuration: presets round-trip, overrides are typed, mistakes list what is valid."""
import dataclasses
import json

import pytest

from swinray import config as C
from swinray import presets as P

COMMANDS = list(P.PRESETS)


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.__name__)
def test_every_command_has_default_and_debug_presets(cls):
    assert {"default", "debug"} <= set(P.PRESETS[cls])


@pytest.mark.parametrize("cls,name", [(c, n) for c in COMMANDS for n in P.PRESETS[c]],
                         ids=lambda x: getattr(x, "__name__", x))
def test_preset_round_trips_through_plain_dict_and_json(cls, name):
    cfg = P.preset(cls, name)
    data = json.loads(json.dumps(C.to_dict(cfg)))
    assert C.from_dict(cls, data) == cfg


def test_configs_are_frozen():
    cfg = C.PretrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0


def test_override_beats_preset_and_is_typed():
    cfg = P.preset(C.PretrainConfig, "debug")
    parsed = C.parse_assignments(["optim.lr=3e-4", "model.roi_size=96,96,64",
                                  "run.amp_bf16=false", "data.source=/data/x"], cfg)
    out = C.apply_overrides(cfg, parsed)
    assert out.optim.lr == 3e-4
    assert out.model.roi_size == (96, 96, 64)
    assert out.run.amp_bf16 is False
    assert out.data.source == "/data/x"
    assert out.model.feature_size == 12          # untouched fields keep the preset's value


def test_int_accepted_where_float_expected():
    out = C.apply_overrides(C.PretrainConfig(), {"optim.lr": 1})
    assert out.optim.lr == 1.0 and isinstance(out.optim.lr, float)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(C.ConfigError, match=r"optim\.lrr.*valid keys.*optim\.lr"):
        C.apply_overrides(C.PretrainConfig(), {"optim.lrr": 1e-3})
    with pytest.raises(C.ConfigError, match=r"unknown key 'optimizer\.lr'.*valid keys here: data, model"):
        C.apply_overrides(C.PretrainConfig(), {"optimizer.lr": 1e-3})


def test_unknown_key_in_dict_names_its_path():
    data = C.to_dict(C.PretrainConfig())
    data["pretext"]["temprature"] = 0.1
    with pytest.raises(C.ConfigError, match=r"'pretext\.temprature'.*pretext\.temperature"):
        C.from_dict(C.PretrainConfig, data)


@pytest.mark.parametrize("key,value,message", [
    ("optim.num_steps", 1.5, r"optim\.num_steps: expected int, got float"),
    ("optim.num_steps", True, r"optim\.num_steps: expected int, got bool"),
    ("run.device", "tpu", r"run\.device: 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    ("model.roi_size", [96, 96], r"model\.roi_size: expected 3 values"),
    ("run.name", 3, r"run\.name: expected str"),
])
def test_wrong_type_names_field_and_expected_type(key, value, message):
    with pytest.raises(C.ConfigError, match=message):
        C.apply_overrides(C.PretrainConfig(), {key: value})


def test_setting_a_whole_section_is_refused():
    with pytest.raises(C.ConfigError, match=r"'optim' is a section.*optim\.lr"):
        C.apply_overrides(C.PretrainConfig(), {"optim": 1})


def test_cli_values_that_do_not_parse_are_errors():
    cfg = C.PretrainConfig()
    with pytest.raises(C.ConfigError, match=r"run\.amp_bf16: expected true or false"):
        C.parse_assignments(["run.amp_bf16=maybe"], cfg)
    with pytest.raises(C.ConfigError, match=r"optim\.lr: cannot read 'fast'"):
        C.parse_assignments(["optim.lr=fast"], cfg)
    with pytest.raises(C.ConfigError, match=r"--set expects KEY=VALUE"):
        C.parse_assignments(["optim.lr"], cfg)


def test_unknown_preset_lists_valid_presets():
    with pytest.raises(C.ConfigError, match=r"unknown preset 'huge'.*default, debug"):
        P.preset(C.PretrainConfig, "huge")


def test_save_and_load_config(tmp_path):
    cfg = C.apply_overrides(C.PretrainConfig(), {"optim.lr": 2e-4})
    path = C.save_config(cfg, tmp_path / "run" / "config.json")
    assert json.loads(path.read_text())["optim"]["lr"] == 2e-4
    assert C.load_config(C.PretrainConfig, path) == cfg


def test_load_config_reports_bad_json_with_file_name(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(C.ConfigError, match=str(bad)):
        C.load_config(C.PretrainConfig, bad)


def test_field_types_lists_every_dotted_key():
    keys = C.field_types(C.PretrainConfig)
    assert {"optim.lr", "model.roi_size", "pretext.temperature", "run.storage", "data.source"} <= set(keys)
    assert keys["optim.lr"] is float


@pytest.mark.parametrize("cls, key", [(C.PretrainConfig, "run.storage"), (C.FinetuneConfig, "run.storage"),
                                      (C.SweepConfig, "storage")])
def test_storage_is_a_path_or_an_object_store_uri_and_nothing_else(cls, key):
    for unusable in ("http://host/runs", "s3://", "ftp://bucket/runs", "s3://bucket/runs?endpoint_override=x"):
        with pytest.raises(C.ConfigError, match=f"{key}=.*storage is a path, or an object-store URI.*s3://BUCKET"):
            C.apply_overrides(cls(), {key: unusable})
    for usable in ("/mnt/shared/runs", "s3://bucket/runs", "gs://bucket"):
        assert C.flat_items(C.apply_overrides(cls(), {key: usable}))[key] == usable


@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", float("nan"), r"optim\.lr=nan: must be a finite number above 0"),
    ("optim.lr", 0.0, r"optim\.lr=0\.0: must be a finite number above 0"),
    ("optim.num_steps", -5, r"optim\.num_steps=-5: must be at least 1"),
    ("optim.batch_size", 0, r"optim\.batch_size=0: must be at least 1"),
    ("seg.val_every_steps", 0, r"seg\.val_every_steps=0: must be at least 1"),
    ("run.checkpoint_every_steps", 0, r"run\.checkpoint_every_steps=0: must be at least 1"),
    ("split.label_fraction", 1.5, r"split\.label_fraction=1\.5: must be in \(0, 1\]"),
    ("model.roi_size", [48, 64, 64], r"model\.roi_size=\(48, 64, 64\): each side a positive multiple of 32"),
    ("model.feature_size", 10, r"model\.feature_size=10: must be a positive multiple of 12"),
    ("run.name", "runs/a", r"run\.name='runs/a': must be a plain name"),
    ("run.name", "", r"run\.name='': must be a plain name"),
    ("run.name", "..", r"run\.name='\.\.': must be a plain name"),
    ("seg.flip_axes", [-1], r"seg\.flip_axes=\(-1,\): spatial axes 0, 1 or 2, each once"),
    ("seg.flip_axes", [0, 0], r"seg\.flip_axes=\(0, 0\): spatial axes 0, 1 or 2, each once"),
])
def test_impossible_values_are_refused_when_the_config_is_read_naming_the_field(key, value, message):
    with pytest.raises(C.ConfigError, match=message):
        C.apply_overrides(C.FinetuneConfig(), {key: value})


def test_a_worker_rebuilding_a_config_runs_the_same_checks_and_names_the_nested_field():
    data = C.to_dict(C.SweepConfig())
    data["finetune"]["optim"]["num_steps"] = 0            # as a tampered or hand-edited config.json would carry
    with pytest.raises(C.ConfigError, match=r"^finetune\.optim\.num_steps=0: must be at least 1"):
        C.from_dict(C.SweepConfig, data)
