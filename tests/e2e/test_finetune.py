"""Fine-tuning, evaluation and prediction end to end on a local Ray instance.

The phantom (BTCV's 14 classes) is fine-tuned from an SSL encoder file, resumed, evaluated and
segmented through the command line; a 2-channel MSD-style dataset checks the patch-embedding
adaptation of 1-channel weights; the real hippocampus MRI runs when ``../shared/data`` has it.
"""
import csv
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.optimizers import WarmupCosineSchedule

from conftest import (
    aim_hparams,
    aim_images,
    registered_checkpoint_steps,
    run_killing_a_worker,
    run_module,
    shared_dataset,
    write_two_channel_mri,
)
from swinray.bench.label_efficiency import bench_label_efficiency
from swinray.config import BenchConfig, DataConfig, FinetuneConfig, apply_overrides
from swinray.models.registry import build_ssl_head
from swinray.models.weights import save_encoder
from swinray.presets import preset
from swinray.seg.postprocess import classes_improved
from swinray.storage import file_sha256
from swinray.train.finetune import run_finetune
from swinray.train.finetune_loop import schedule_position
from swinray.train.precision import cpu_has_native_bf16, cpu_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def quiet(*_):
    pass


def debug_config(tmp_path, data: DataConfig | None = None, **overrides) -> FinetuneConfig:
    cfg = preset(FinetuneConfig, "debug")
    cfg = replace(cfg, data=data or replace(cfg.data, phantom_dir=str(tmp_path.parent / "phantom"),
                                            cache_dir=str(tmp_path.parent / "cache")))
    return apply_overrides(cfg, {"run.storage": str(tmp_path), **overrides})


def ssl_encoder(path, in_channels=1):
    """An encoder file as pretraining writes it (debug size, matching the debug fine-tuning model)."""
    torch.manual_seed(1)
    model = preset(FinetuneConfig, "debug").model
    head = build_ssl_head(in_channels=in_channels, feature_size=model.feature_size, roi_size=model.roi_size,
                          window_size=model.window_size)
    return str(save_encoder(head, path))


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def logged_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]     # not a line being written


@pytest.fixture(scope="module")
def phantom_run(local_ray, ray_tmpdir, tmp_path_factory):
    """A debug fine-tuning run on the phantom from SSL weights (6 steps, validating and so
    checkpointing at 3 and 6) one of whose Train workers is killed once the checkpoint at step 3 is
    registered and step 5 logged, so that Ray Train restarts it from step 3 and redoes steps 4 and 5.
    Shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ft")
    encoder = ssl_encoder(tmp / "encoder.pt")
    cfg = debug_config(tmp / "runs", **{"seg.pretrained": encoder, "model.drop_path_rate": 0.1,
                                        "run.checkpoint_every_steps": 100})
    run_dir = tmp / "runs" / cfg.run.name
    before_kill = {}

    def ready() -> bool:
        before_kill["rows"] = logged_rows(run_dir)
        return 3 in registered_checkpoint_steps(run_dir) and any(r["step"] == 5 for r in before_kill["rows"])

    summary, killed_at = run_killing_a_worker(
        lambda: run_finetune(cfg, quiet), ray_tmpdir, ready=ready,
        too_late=lambda: cfg.optim.num_steps in registered_checkpoint_steps(run_dir))
    return cfg, summary, tmp, {"killed_at": killed_at, "rows": before_kill["rows"]}


def test_a_killed_worker_resumes_and_redoes_its_steps_as_they_first_ran(phantom_run):
    cfg, summary, _, before_kill = phantom_run
    rows = [json.loads(line) for line in open(summary["metrics_log"])]
    assert [r["step"] for r in rows] == list(range(1, cfg.optim.num_steps + 1))   # each step once
    resumed = next((r["step"] for r in rows if r["time"] > before_kill["killed_at"]), None)
    assert resumed == 4, rows                               # after the checkpoint at step 3
    assert rows[:3] == before_kill["rows"][:3]              # the steps up to it kept as logged
    # Cases, crops, augmentations and drop-path follow from (seed, rank, step), and the optimizer and
    # schedule come back with the weights: steps 4 and 5, logged before the kill and redone after it,
    # are what they were the first time (step 5's loss follows step 4's update)
    for first in (r for r in before_kill["rows"] if r["step"] in (4, 5)):
        again = rows[first["step"] - 1]
        for key in ("loss", "grad_norm", "lr"):
            assert again[key] == pytest.approx(first[key], rel=1e-5, abs=1e-7), (key, first, again)


def test_phantom_fine_tuning_resumes_keeps_the_best_model_and_reports_the_weight_loading(phantom_run):
    cfg, summary, tmp, _ = phantom_run
    assert summary["ok"] and summary["steps"] == cfg.optim.num_steps
    assert summary["pretrained_report"].startswith("126 encoder tensors loaded, 0 missing")
    assert len(summary["val_dice_per_class"]) == 13 and 0.0 <= summary["best_val_dice"] <= 1.0
    rows = [json.loads(line) for line in open(summary["metrics_log"])]
    assert [r["step"] for r in rows] == list(range(1, cfg.optim.num_steps + 1))
    validated = {r["step"]: r["val_dice"] for r in rows if "val_dice" in r}
    assert sorted(validated) == [3, 6]
    assert summary["best_val_dice"] == pytest.approx(max(validated.values()))
    assert summary["best_step"] == max(validated, key=validated.get)
    split = json.loads(open(summary["split"]).read())
    assert (len(split["training"]), len(split["validation"]), len(split["test"])) == (2, 1, 1)
    assert len(set(split["training"]) | set(split["validation"]) | set(split["test"])) == 4     # disjoint
    assert summary["val_dice"] == summary["best_val_dice"] and summary["num_test_cases"] == 1
    assert 0.0 <= summary["test_dice"] <= 1.0 and len(summary["test_dice_per_class"]) == 13   # scored once, at the end
    saved = torch.load(summary["model"], weights_only=True)
    assert saved["format"] == "swinray-segmenter-v1" and saved["model"]["out_channels"] == 14
    # post-processing: both Dice values at each validation; the file keeps the classes that gained at its step
    assert all("val_largest_component_dice_liver" in r for r in rows if "val_dice" in r)
    raw, kept = saved["metrics"]["val_dice_per_class"], saved["metrics"]["val_dice_per_class_largest_component"]
    assert len(kept) == 13 and saved["largest_component_classes"] == classes_improved(raw, kept)
    assert list(summary["val_dice_per_class_largest_component"].values()) == kept
    assert summary["largest_component"] == [saved["task"]["label_names"][c] for c in saved["largest_component_classes"]]
    assert summary["test_largest_component"] == summary["largest_component"]
    assert list(summary["test_dice_per_class_before_postprocessing"]) == list(summary["test_dice_per_class"])
    assert 0.0 <= summary["test_dice_before_postprocessing"] <= 1.0
    overlays = aim_images(tmp / "runs", "val_overlay_0")[cfg.run.name]      # the resumed run kept its Aim run
    assert sorted(overlays) == [3, 6]                       # at each validation
    # The saved and tracked config is the one that ran: the task's ROI, channels and name, no sentinels
    saved = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert saved["model"]["roi_size"] == summary["roi_size"] == [64, 64, 64]       # the debug preset's
    assert (saved["model"]["in_channels"], saved["model"]["out_channels"]) == (1, 14)
    assert saved["data"]["task"] == summary["task"] == "phantom" and saved["run"]["experiment"] == cfg.run.name
    assert aim_hparams(tmp / "runs")[cfg.run.name] == saved
    assert "liver=#" in overlays[6][2]                      # the caption is the legend, by class name
    lines = []
    again = run_finetune(cfg, lines.append)                 # same name: over, so Train does not start
    assert any("already finished at step 6 (num_steps)" in line for line in lines), lines
    assert not any(line.startswith("fine-tuning ") for line in lines), lines
    assert again["steps"] == cfg.optim.num_steps and again["best_val_dice"] == summary["best_val_dice"]
    assert again["test_dice"] == summary["test_dice"] and again["stopped_by"] == "num_steps"
    assert len(open(summary["metrics_log"]).read().splitlines()) == cfg.optim.num_steps


def test_evaluate_scores_every_labelled_case_with_dice_and_hd95(phantom_run):
    cfg, summary, tmp, _ = phantom_run
    out = run_module("platform.evaluate", "--checkpoint", summary["model"], "--data", cfg.data.phantom_dir,
                     "--out", str(tmp / "eval"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    split = json.loads(open(summary["split"]).read())
    assert result["split"] == "test" and result["num_cases"] == 1 and len(result["dice_per_class"]) == 13
    assert result["mean_dice"] == pytest.approx(summary["test_dice"])      # the run's own test score, again
    assert result["test_time_flips"] == summary["test_time_flips"] == [0]  # as it trained: left-right
    assert result["largest_component"] == summary["largest_component"]    # as its validation chose
    with open(result["per_case_csv"]) as f:
        table = list(csv.DictReader(f))
    assert [row["case_id"] for row in table] == split["test"]              # never a case it trained on
    assert "hd95_mm_liver" in table[0] and "dice_right_kidney" in table[0] and "false_positive_spleen" in table[0]


def test_predict_writes_label_maps_on_each_inputs_grid(phantom_run):
    cfg, summary, tmp, _ = phantom_run
    images = sorted((Path(cfg.data.phantom_dir) / "imagesTr").glob("*.nii.gz"))
    assert len(images) == 4
    out = run_module("platform.predict", "--checkpoint", summary["model"], "--input", str(images[0].parent),
                     "--output", str(tmp / "pred"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    assert result["num_written"] == len(images) and result["num_rejected"] == 0
    for image in images:
        source, labels = nib.load(image), nib.load(tmp / "pred" / image.name)
        assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
        assert labels.get_data_dtype() == np.uint8


def test_a_model_file_that_is_not_a_segmenter_is_refused_clearly(phantom_run, tmp_path):
    _, summary, tmp, _ = phantom_run
    out = run_module("platform.evaluate", "--checkpoint", str(tmp / "encoder.pt"), "--data", str(tmp))
    assert out.returncode == 1
    assert "not a fine-tuned model" in last_json(out.stdout)["error"]


def test_label_efficiency_bench_scores_arms_on_the_test_split_reports_failures_and_reuses_finished_runs(phantom_run):
    cfg, _, tmp, _ = phantom_run
    bench = apply_overrides(preset(BenchConfig, "debug"), {
        "out_dir": str(tmp / "bench"), "pretrained": [str(tmp / "encoder.pt")], "fractions": [1.0, 0.34],
        "budget_steps": 2, "seeds": 1})
    result = bench_label_efficiency(replace(bench, data=cfg.data), quiet)
    assert (result["arms"], result["fractions"], result["runs"]) == (["scratch", tmp.name], [0.34, 1.0], 4)
    # 0.34 of 2 training cases is 1 case for 2 workers: both arms fail there, and the bench goes on
    assert result["failed"] == 2 and not result["ok"]
    rows = json.loads(Path(result["results"]).read_text())["rows"]
    assert all("training case per worker" in r["error"] for r in rows if r["fraction"] == 0.34)
    finished = [r for r in rows if r["fraction"] == 1.0]
    assert all(0.0 <= r["test_dice"] <= 1.0 and r["test_cases"] == 1 and r["steps"] == 2 for r in finished)
    assert all(r["cpu"] == cpu_name() for r in finished)     # what ran it: bf16 rounds as its CPU does
    runs = tmp / "bench" / "label_efficiency"
    splits = [json.loads((runs / name / "split.json").read_text()) for name in ("scratch-f1-s0", f"{tmp.name}-f1-s0")]
    assert splits[0] == splits[1]                            # same split and seed for every arm
    report = json.loads((runs / f"{tmp.name}-f1-s0" / "pretrained_report.json").read_text())
    assert report["sha256"] == file_sha256(tmp / "encoder.pt")      # what a resume checks the file against
    assert not (runs / "scratch-f1-s0" / "pretrained_report.json").exists()
    assert "| 0.34 | ? | - | - | - | 2 |" in Path(result["table"]).read_text()
    assert Path(result["plot"]).read_bytes()[:4] == b"\x89PNG"

    lines = []
    again = bench_label_efficiency(replace(bench, data=cfg.data), lines.append)
    assert sum("(reused)" in line for line in lines) == 2                # the finished runs did not run again
    assert again["cells"][1] == result["cells"][1]

    # A variant of the SSL arm: scratch's run is reused, the variant's table is written beside the study's
    lines, table = [], Path(result["table"]).read_text()
    variant = bench_label_efficiency(replace(apply_overrides(bench, {"ssl_set": ["seg.pretrained_lr_scale=0.5"],
                                                                     "fractions": [1.0]}), data=cfg.data), lines.append)
    arm = f"{tmp.name}+pretrained_lr_scale=0.5"
    assert variant["arms"] == ["scratch", arm] and variant["ok"]
    assert [line for line in lines if "(reused)" in line] == [lines[1]] and "scratch" in lines[1]
    assert Path(variant["table"]).name == "label_efficiency+pretrained_lr_scale=0.5.md"
    assert Path(result["table"]).read_text() == table
    state = torch.load(next((runs / f"{arm}-f1-s0").glob("checkpoint_*/state.pt")), weights_only=True)
    full, pretrained = state["optimizer"]["param_groups"]         # the encoder's tensors at half the rate
    assert pretrained["initial_lr"] == pytest.approx(0.5 * full["initial_lr"]) and len(pretrained["params"]) > 0


def test_a_run_with_patience_stops_once_that_many_validations_bring_nothing_better(local_ray, tmp_path):
    """A learning rate too small to change more than a stray voxel: the Dice of step 1 is never
    bettered, so with patience 2 and a validation every step the run stops at step 3, not at its cap of 12."""
    cfg = debug_config(tmp_path / "runs", **{"optim.num_steps": 12, "optim.lr": 1e-12, "seg.val_every_steps": 1,
                                             "seg.patience_validations": 2, "run.name": "ft-patience",
                                             "seg.num_overlay_cases": 0})
    summary = run_finetune(cfg, quiet)
    dice = [json.loads(line)["val_dice"] for line in open(summary["metrics_log"])]
    assert (summary["steps"], summary["stopped_by"], summary["best_step"]) == (3, "patience", 1), dice
    assert max(dice[1:]) <= dice[0] and max(dice) - min(dice) < 1e-6, dice
    lines = []
    again = run_finetune(cfg, lines.append)             # a rerun of a finished run does not train on
    assert (again["steps"], again["stopped_by"]) == (3, "patience")
    assert any("already finished at step 3 (patience)" in line for line in lines), lines


def test_a_finished_run_asked_for_more_steps_continues_from_its_end(phantom_run):
    """Runs last among the tests of ``phantom_run``: it extends that run."""
    cfg, summary, _, _ = phantom_run
    longer = run_finetune(apply_overrides(cfg, {"optim.num_steps": 8}), quiet)
    assert longer["ok"] and longer["steps"] == 8
    rows = [json.loads(line) for line in open(longer["metrics_log"])]
    assert [r["step"] for r in rows] == list(range(1, 9))          # steps 1-6 kept, 7 and 8 added
    assert [r["step"] for r in rows if "val_dice" in r] == [3, 6, 8]


def test_two_channel_mri_fine_tunes_from_one_channel_weights_adapting_the_patch_embedding(local_ray, tmp_path):
    root = write_two_channel_mri(tmp_path / "Prostateish")
    encoder = ssl_encoder(tmp_path / "encoder.pt", in_channels=1)
    cfg = debug_config(tmp_path / "runs", DataConfig(source=str(root), cache_dir=str(tmp_path / "cache")),
                       **{"seg.pretrained": encoder, "optim.num_steps": 2, "seg.val_every_steps": 2,
                          "split.num_folds": 3, "split.test_fraction": 0.0, "run.name": "ft-2ch"})   # 3 cases
    summary = run_finetune(cfg, quiet)
    assert summary["ok"] and summary["num_validation_cases"] == 1
    assert "adapted from 1 to 2 input channel(s)" in summary["pretrained_report"]
    assert " 0 missing" in summary["pretrained_report"]
    assert list(summary["val_dice_per_class"]) == ["pz", "tz"]
    saved = torch.load(summary["model"], weights_only=True)
    assert saved["model"]["in_channels"] == 2


def test_real_head_and_neck_ct_fine_tunes_five_organs_in_its_minutes_and_scores_the_test_split(local_ray, tmp_path,
                                                                                              capsys):
    """Three real OpenKBP CTs (one each for training, validation and test), the task inferred from
    the data: a CT window, label pairs from the parotids' names, every organ scored. Trained until
    its minutes run out, as the preset on a slow CPU (here 12 s, long before ``optim.num_steps``), on a schedule
    that follows the clock (``seg.schedule_within_max_minutes``): every step's rate is the schedule's
    where the step or the clock stands, whichever is further, and the last is 0 (without the setting,
    near the peak). Where the CPU has no native bf16 the driver says the steps run in float32."""
    data = shared_dataset("OpenKBP_HN_OAR")
    cfg = debug_config(tmp_path / "runs", DataConfig(source=str(data), cache_dir=str(tmp_path / "cache"), max_cases=3),
                       **{"optim.num_steps": 100_000, "seg.max_minutes": 0.2, "seg.schedule_within_max_minutes": True,
                          "seg.val_every_steps": 100_000, "run.checkpoint_every_steps": 100_000, "run.name": "ft-oar",
                          "run.num_workers": 1, "split.num_folds": 2, "seg.num_overlay_cases": 0,
                          "seg.cpu_bf16": True})       # as the preset: bf16 steps where the CPU has it
    summary = run_finetune(cfg, quiet)
    organs = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Mandible"]
    assert summary["ok"] and summary["task"] == "OpenKBP_HN_OAR"
    assert (summary["num_training_cases"], summary["num_validation_cases"], summary["num_test_cases"]) == (1, 1, 1)
    assert list(summary["val_dice_per_class"]) == organs and list(summary["test_dice_per_class"]) == organs
    assert 0.0 <= summary["test_dice"] <= 1.0
    assert summary["train_bf16"] is cpu_has_native_bf16()      # what the steps ran in, not what was asked
    float32_note = "seg.cpu_bf16 is on, but this CPU has no native bf16"
    assert (float32_note in capsys.readouterr().err) == (not cpu_has_native_bf16())

    rows = logged_rows(Path(summary["metrics_log"]).parent)
    assert summary["stopped_by"] == "max_minutes" and 2 <= summary["steps"] == len(rows) < 100_000
    assert (float32_note in rows[0].get("note", "")) == (not cpu_has_native_bf16())
    schedule = WarmupCosineSchedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]),
                                    cfg.optim.warmup_steps, cfg.optim.num_steps)
    for row in rows[:-1]:           # the last row's elapsed_s includes the final validation
        position = schedule_position(row["step"], row["elapsed_s"], cfg)
        assert position > row["step"] and row["lr"] == pytest.approx(cfg.optim.lr * schedule.lr_lambda(position))
    assert rows[-1]["lr"] == 0.0
    task = json.loads(next((tmp_path / "cache").glob("OpenKBP_HN_OAR-*/task.json")).read_text())
    assert task["modality"] == "CT" and task["intensity"] == "ct_window" and task["label_pairs"] == [[4, 3]]


def test_real_hippocampus_fine_tunes_and_evaluates(local_ray, tmp_path):
    data = shared_dataset("Task04_Hippocampus")
    cfg = debug_config(tmp_path / "runs", DataConfig(source=str(data), cache_dir=str(tmp_path / "cache"),
                                                     max_cases=10),
                       **{"optim.num_steps": 2, "seg.val_every_steps": 2, "run.name": "ft-hippo",
                          "model.roi_size": [0, 0, 0]})
    summary = run_finetune(cfg, quiet)
    assert summary["ok"] and summary["task"] == "Task04_Hippocampus"
    saved = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert saved["model"]["roi_size"] == summary["roi_size"] == [64, 64, 64]        # the task's, resolved
    assert (saved["model"]["in_channels"], saved["model"]["out_channels"]) == (1, 3)
    assert list(summary["val_dice_per_class"]) == ["anterior", "posterior"]
    assert (summary["num_training_cases"], summary["num_validation_cases"], summary["num_test_cases"]) == (6, 2, 2)
    out = run_module("platform.evaluate", "--checkpoint", summary["model"], "--data", str(data),
                     "--out", str(tmp_path / "eval"), "--set", "max_cases=3")
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    assert result["num_cases"] == 3 and set(result["dice_per_class"]) == {"anterior", "posterior"}
