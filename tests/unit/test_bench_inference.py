"""Sliding-window inference bench: it counts windows as MONAI runs them and compares on one volume."""
import json

import pytest
import torch
from monai.inferers import sliding_window_inference

from swinray.bench.inference import bench_inference
from swinray.config import BenchConfig, apply_overrides
from swinray.presets import preset
from swinray.seg.model_input import count_windows


@pytest.mark.parametrize("shape, roi, overlap", [((96, 96, 64), (64, 64, 64), 0.25), ((40, 50, 30), (64, 64, 64), 0.5),
                                                 ((200, 130, 70), (96, 96, 32), 0.0)])
def test_count_windows_is_what_monai_runs(shape, roi, overlap):
    seen = []

    def predictor(batch):
        seen.append(batch.shape[0])
        return batch

    sliding_window_inference(torch.zeros((1, 1, *shape)), roi, 3, predictor, overlap=overlap)
    assert count_windows(shape, roi, overlap) == sum(seen)


def test_the_bench_times_both_sides_on_the_same_volume_and_writes_every_field(tmp_path):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"target": "inference", "rounds": 1,
                                                          "volume_shape": [96, 96, 64], "out_dir": str(tmp_path)})
    result = bench_inference(cfg, lambda *_: None)
    assert result["windows"] == 4 and result["roi_size"] == [64, 64, 64]       # 2 x 2 x 1 at overlap 0.25
    assert result["ours_seconds"] > 0 and result["plain_seconds"] > 0
    ratio = result["speed_ratio_ours_over_plain"]
    assert ratio == pytest.approx(result["plain_seconds"] / result["ours_seconds"], rel=0.01)
    assert 0.5 <= result["label_agreement"] <= 1.0            # the same model: blending differs at the seams only
    assert json.loads((tmp_path / "inference.json").read_text()) == result
