"""Configs of the commands around training: scoring and applying a model (``evaluate``, ``predict``)
and the data and reporting tools (``download``, ``convert``, ``report``). Re-exported by
``swinray.config``, where every command's config is found."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from swinray.config_checks import at_least, require
from swinray.limits import VolumeLimits


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = ""                # model.pt written by finetune
    data: str = ""                      # MSD-format folder (or dataset file) with labelled cases
    out_dir: str = "outputs/evaluate"   # each evaluation gets its own <model's run>-on-<dataset>[-N] folder here
    max_cases: int = 0                  # 0 = every case of the split
    split: Literal["test", "validation", "train", "all"] = "test"   # by the run's split.json beside the model:
                                        # test = its held-out cases and any it never saw; train needs asking
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    tta_flips: bool = True              # average the image's mirror images along the axes the model trained
                                        # flipped (2x the time for left-right); false = one pass
    largest_component: bool = True      # apply the post-processing the model's validation chose (the classes
                                        # that keep only their largest connected component); false = raw
    device: Literal["auto", "cpu", "cuda"] = "auto"
    limits: VolumeLimits = field(default_factory=VolumeLimits)  # per-volume memory bounds

    def __post_init__(self) -> None:
        at_least(0, max_cases=self.max_cases)
        at_least(1, sw_batch_size=self.sw_batch_size)
        require(0.0 <= self.sw_overlap < 1.0, "sw_overlap", self.sw_overlap, "must be in [0, 1)")


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: str = ""                # model.pt written by finetune
    input: str = ""                     # a NIfTI file or a folder of them
    output: str = "outputs/predict"     # label maps, one per input, same name, input geometry
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    tta_flips: bool = True              # as evaluate's: what evaluate scores is what predict writes
    largest_component: bool = True      # as evaluate's
    device: Literal["auto", "cpu", "cuda"] = "auto"
    limits: VolumeLimits = field(default_factory=VolumeLimits)  # per-volume memory bounds

    def __post_init__(self) -> None:
        at_least(1, sw_batch_size=self.sw_batch_size)
        require(0.0 <= self.sw_overlap < 1.0, "sw_overlap", self.sw_overlap, "must be in [0, 1)")


@dataclass(frozen=True)
class DownloadConfig:
    task: str = ""                      # an MSD task (Task01_BrainTumour ... Task10_Colon) or all
    root: str = "data/msd"              # the task lands in <root>/<task>, its archive beside it
    mirror: str = ""                    # a base URL serving the same archive names ("" = MONAI's official URLs)
    md5: str = ""                       # override the table's checksum (one task; a mirror's own archive)
    keep_archive: bool = True           # keep the .tar after extracting (a rerun then verifies it)
    check: bool = True                  # run the preprocessing's validation over every case


@dataclass(frozen=True)
class ConvertConfig:
    format: Literal["btcv"] = "btcv"    # the layout the data was published in
    src: str = ""                       # btcv: the RawData folder (Training/img, Training/label, Testing/img)
    out: str = ""                       # the converted dataset (dataset_0.json, imagesTr, labelsTr, imagesTs)


@dataclass(frozen=True)
class ReportConfig:
    aim_repo: str = "outputs"           # the Aim repo (a folder holding .aim) runs went to
    experiment: str = ""                # the sweep's name (every Aim run of this experiment)
    metric: str = "val_dice"            # the score; <metric>_<class> are its per-class curves
    out_dir: str = ""                   # "" = outputs/reports/<experiment>
