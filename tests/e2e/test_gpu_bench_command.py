"""``bench gpu`` end to end on a CPU with the debug preset: every part measured, every field present,
the scaling part over two gloo Ray Train workers, and results written as JSON and Markdown."""
import json

import pytest

from conftest import run_module

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

FIELDS = {
    "pretrain": {"steps_per_s", "samples_per_s", "peak_memory_mb", "achieved_tflops", "tflop_per_step",
                 "fraction_of_peak", "data_wait_fraction", "gradient_checkpointing"},
    "pretrain_checkpointing": {"steps_per_s", "samples_per_s", "peak_memory_mb", "achieved_tflops"},
    "finetune": {"steps_per_s", "samples_per_s", "achieved_tflops", "peak_memory_mb"},
    "inference": {"seconds_per_volume", "windows", "seconds_per_window"},
    "data_supply_pretrain": {"samples_per_s_per_core"},
    "data_supply_finetune": {"samples_per_s_per_core"},
    "scaling": {"workers", "backend", "samples_per_s", "scaling_ratio", "scaling_efficiency"},
}


def test_the_debug_preset_measures_every_part_on_a_cpu_and_writes_its_results(tmp_path):
    out = run_module("platform.bench", "gpu", "--preset", "debug", "--set", f"out_dir={tmp_path}",
                     "--set", "part_seconds=1", timeout=540)      # a shape check, not a measurement
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["device"] == "cpu" and result["amp_bf16"] is True
    for part, fields in FIELDS.items():
        assert fields <= set(result["parts"][part]), (part, result["parts"][part])
    pretrain, checkpointed = result["parts"]["pretrain"], result["parts"]["pretrain_checkpointing"]
    assert pretrain["achieved_tflops"] > 0 and 0.0 <= pretrain["data_wait_fraction"] <= 1.0
    assert checkpointed["gradient_checkpointing"] is True           # recomputation counts: more FLOPs per step
    assert checkpointed["tflop_per_step"] > pretrain["tflop_per_step"]
    assert result["parts"]["scaling"]["backend"] == "gloo" and result["parts"]["scaling"]["workers"] == 2
    assert set(result["cpu_cores_per_device"]) == {"pretrain", "finetune"}
    assert json.loads((tmp_path / "gpu.json").read_text())["parts"] == result["parts"]
    assert "| scaling |" in (tmp_path / "gpu.md").read_text()


def test_the_papers_settings_with_every_gpu_hidden_stop_at_once_with_the_reason(tmp_path):
    """The default command (run.device=auto) on a machine where PyTorch sees no GPU: no hours on a CPU."""
    out = run_module("platform.bench", "gpu", "--set", f"out_dir={tmp_path}", env={"CUDA_VISIBLE_DEVICES": ""},
                     timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False
    assert "run.device=auto: CUDA_VISIBLE_DEVICES='' hides every GPU; measure the CPU with" in summary["error"]
