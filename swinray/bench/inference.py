"""Sliding-window inference: what evaluation and prediction run, against MONAI's plain call, on the
same model and volume.

Ours is ``swinray.seg.inference.predict_probabilities``: MONAI's ``sliding_window_inference`` with
Gaussian blending of overlapping windows (no seams), bf16 autocast on a GPU, and a softmax. Plain is
``sliding_window_inference(image, roi, sw_batch_size, model, overlap)`` with its defaults (windows
averaged with constant weights), as a MONAI tutorial calls it. Both run the fine-tuning preset's
model (random weights: speed does not depend on them) on one synthetic volume of ``volume_shape``,
alternating over ``rounds`` (after one untimed warm-up pass) because this machine's speed drifts.
``speed_ratio_ours_over_plain`` is plain seconds over ours; ``label_agreement`` is the fraction of voxels whose argmax
class is the same on both sides.

    python -m platform.bench inference --set volume_shape=256,256,96
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

from swinray.config import BenchConfig, FinetuneConfig
from swinray.models.registry import build_swin_unetr
from swinray.presets import preset
from swinray.seg.inference import predict_probabilities
from swinray.seg.model_input import count_windows
from swinray.storage import write_json

_DEFAULT_ROI = (96, 96, 96)             # a preset that leaves the ROI to the task (the paper's)
_CLASSES = 14                           # BTCV's 13 organs and background


@torch.no_grad()
def plain(model, image: torch.Tensor, roi, sw_batch_size: int, overlap: float) -> torch.Tensor:
    return sliding_window_inference(image, roi, sw_batch_size, model, overlap=overlap)


def bench_inference(cfg: BenchConfig, log=print) -> dict:
    ft = preset(FinetuneConfig, cfg.finetune_preset)
    roi = tuple(ft.model.roi_size) if any(ft.model.roi_size) else _DEFAULT_ROI
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.run.device != "cpu" else "cpu")
    torch.manual_seed(cfg.run.seed)
    model = build_swin_unetr(in_channels=1, out_channels=_CLASSES, feature_size=ft.model.feature_size,
                             window_size=ft.model.window_size).to(device).eval()
    image = torch.rand((1, 1, *cfg.volume_shape), device=device)
    windows = count_windows(cfg.volume_shape, roi, ft.seg.sw_overlap)
    log(f"bench inference: {cfg.finetune_preset}'s model (feature size {ft.model.feature_size}, window "
        f"{ft.model.window_size}) on a {cfg.volume_shape} volume, {windows} windows of {roi}, overlap "
        f"{ft.seg.sw_overlap}, {ft.seg.sw_batch_size} per pass, {cfg.rounds} round(s) on {device.type}")
    with torch.no_grad():                   # warm-up, untimed: the first passes allocate and tune kernels
        model(torch.zeros((ft.seg.sw_batch_size, 1, *roi), device=device))
    seconds = {"ours": [], "plain": []}
    for r in range(cfg.rounds):
        for side in ("ours", "plain"):
            began = time.perf_counter()
            if side == "ours":
                ours = predict_probabilities(model, image, roi, ft.seg.sw_batch_size, ft.seg.sw_overlap,
                                             use_amp=device.type == "cuda")
            else:
                reference = plain(model, image, roi, ft.seg.sw_batch_size, ft.seg.sw_overlap)
            seconds[side].append(time.perf_counter() - began)
        log(f"round {r + 1}/{cfg.rounds}: ours {seconds['ours'][-1]:.1f} s, plain {seconds['plain'][-1]:.1f} s")
    agreement = float((ours.argmax(1) == reference.argmax(1)).float().mean())
    mean = {side: statistics.mean(values) for side, values in seconds.items()}
    result = {"command": "bench", "target": "inference", "preset": cfg.finetune_preset, "device": device.type,
              "volume_shape": list(cfg.volume_shape), "roi_size": list(roi), "windows": windows,
              "sw_batch_size": ft.seg.sw_batch_size, "sw_overlap": ft.seg.sw_overlap, "rounds": cfg.rounds,
              "ours_seconds": round(mean["ours"], 3), "plain_seconds": round(mean["plain"], 3),
              "speed_ratio_ours_over_plain": round(mean["plain"] / mean["ours"], 3),
              "seconds_per_window": round(mean["ours"] / windows, 4),
              "label_agreement": round(agreement, 4), "threads": torch.get_num_threads()}
    log(f"bench inference: ours {result['ours_seconds']} s, plain MONAI {result['plain_seconds']} s per volume "
        f"(speed ratio {result['speed_ratio_ours_over_plain']}), {result['seconds_per_window']} s per window; "
        f"same argmax on "
        f"{agreement:.1%} of the voxels")
    write_json(Path(cfg.out_dir) / "inference.json", result)
    return result
