"""Typed configuration: frozen dataclasses per concern and command, each checking its own fields.

Named presets live in ``swinray.presets``.

The dict round trip, overrides and CLI parsing live in ``swinray.config_codec`` and are re-exported
here, so ``from swinray.config import apply_overrides`` keeps working.

    python -m platform.pretrain --preset debug --set optim.lr=3e-4 --print-config
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from swinray.config_checks import at_least, non_negative_finite, plain_name, positive_finite, require
from swinray.config_codec import (  # noqa: F401
    apply_overrides,
    field_types,
    flat_items,
    from_dict,
    load_config,
    parse_assignments,
    parse_value,
    save_config,
    to_dict,
)
from swinray.config_tools import (  # noqa: F401  (re-exported: every command's config is here)
    ConvertConfig,
    DownloadConfig,
    EvaluateConfig,
    PredictConfig,
    ReportConfig,
)
from swinray.errors import ConfigError  # noqa: F401  (re-exported: from swinray.config import ConfigError)
from swinray.limits import VolumeLimits  # noqa: F401  (re-exported)
from swinray.storage import check_storage

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

def require_phantom_shape(name: str, shape: tuple[int, int, int]) -> None:
    require(len(shape) == 3 and all(side >= low for side, low in zip(shape, (48, 48, 16))), name, shape,
            "must be at least (48, 48, 16): the phantom's organs need that many voxels")


@dataclass(frozen=True)
class DataConfig:
    source: str = ""                    # dataset folder or dataset file; "" = the built-in phantom
    task: str = "auto"                  # registry name (BTCV, Task01_BrainTumour, ...) or "auto"
    cache_dir: str = ""                 # preprocessed cases, one subfolder per dataset + settings;
                                        # "" = <run.storage>/cache, shared with the runs on a cluster
    max_cases: int = 0                  # 0 = every case; N = the first N (smoke tests)
    num_phantom_cases: int = 8          # cases generated when source is the phantom
    phantom_shape: tuple[int, int, int] = (128, 128, 64)  # their voxels, when written (each case draws
                                        # its field of view, so this sets the spacing); a smaller one makes
                                        # every step but training's crops cheaper (the debug presets')
    phantom_dir: str = ""               # where the phantom is written when it is the source;
                                        # "" = <run.storage>/phantom
    unlabelled: tuple[str, ...] = ()    # pretraining corpus: folders of unlabelled volumes (or .txt files
                                        # listing folders), one collection each; replaces source
    spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # resample to this (R, A, S) instead of the
                                        # task's; e.g. pretrain at the spacing the fine-tuning task uses
    window_hu: tuple[float, float] = (0.0, 0.0)  # CT: this (low, high) HU window instead of the task's;
                                        # e.g. pretrain in the fine-tuning task's intensities
    exclude_cases: str = ""             # corpus: leave these cases out, by file name without suffix: a run's
                                        # split.json (its test cases) or a .txt with one per line, so that
                                        # pretraining never sees the images a test split scores
    limits: VolumeLimits = field(default_factory=VolumeLimits)  # per-volume memory bounds

    def __post_init__(self) -> None:
        require(self.spacing_mm == (0.0, 0.0, 0.0) or all(math.isfinite(s) and s > 0 for s in self.spacing_mm),
                 "spacing_mm", self.spacing_mm, "three voxel sizes in mm above 0, or (0, 0, 0) for the task's")
        require(self.window_hu == (0.0, 0.0) or (all(math.isfinite(v) for v in self.window_hu)
                                                  and self.window_hu[0] < self.window_hu[1]),
                 "window_hu", self.window_hu, "a (low, high) HU window with low < high, or (0, 0) for the task's")
        at_least(0, max_cases=self.max_cases)
        at_least(1, num_phantom_cases=self.num_phantom_cases)
        require_phantom_shape("phantom_shape", self.phantom_shape)


@dataclass(frozen=True)
class PhantomConfig:
    out_dir: str = "outputs/phantom"    # MSD-layout folder to write
    num_cases: int = 8
    seed: int = 0
    shape: tuple[int, int, int] = (128, 128, 64)  # voxels per case before any reorientation

    def __post_init__(self) -> None:
        at_least(1, num_cases=self.num_cases)
        at_least(0, seed=self.seed)
        require_phantom_shape("shape", self.shape)


@dataclass(frozen=True)
class ModelConfig:
    feature_size: int = 48              # 48 is the paper's Swin UNETR-B; must be divisible by 12
    roi_size: tuple[int, int, int] = (96, 96, 96)  # sides divisible by 32 (five 2x downsamplings);
                                                   # (0, 0, 0) = the task's ROI (fine-tuning)
    in_channels: int = 0                # image channels; 0 = from the data (resolved before the run)
    out_channels: int = 0               # classes incl. background (fine-tuning); 0 = from the data's labels
    window_size: int = 7                # Swin attention window; 7 is the paper's, 4 is ~3.6x faster
                                        # at 64^3 on a CPU (attention cost grows with window volume)
    drop_path_rate: float = 0.0
    gradient_checkpointing: bool = False  # trades compute for memory on large ROIs

    def __post_init__(self) -> None:
        require(self.feature_size > 0 and self.feature_size % 12 == 0, "feature_size", self.feature_size,
                 "must be a positive multiple of 12 (attention heads split it 3, 6, 12 and 24 ways), e.g. 12 or 48")
        require(self.roi_size == (0, 0, 0) or all(side > 0 and side % 32 == 0 for side in self.roi_size),
                 "roi_size", self.roi_size, "each side a positive multiple of 32 (five 2x downsamplings), "
                 "or (0, 0, 0) for the task's ROI")
        at_least(0, in_channels=self.in_channels, out_channels=self.out_channels)
        at_least(1, window_size=self.window_size)
        require(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", self.drop_path_rate, "must be in [0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 4e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    num_steps: int = 45000              # the paper pretrains for 450K steps on 4 GPUs
    batch_size: int = 2                 # per worker
    grad_accum_steps: int = 1
    grad_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        positive_finite(lr=self.lr, grad_clip_norm=self.grad_clip_norm)
        non_negative_finite(weight_decay=self.weight_decay)
        at_least(0, warmup_steps=self.warmup_steps)
        at_least(1, num_steps=self.num_steps, batch_size=self.batch_size, grad_accum_steps=self.grad_accum_steps)


@dataclass(frozen=True)
class PretextConfig:
    rotation_weight: float = 1.0        # 0 switches the rotation task off
    contrastive_weight: float = 1.0
    reconstruction_weight: float = 1.0
    temperature: float = 0.5            # NT-Xent temperature
    cutout_max_fraction: float = 0.3    # the paper masks up to 30% of the volume

    def __post_init__(self) -> None:
        non_negative_finite(rotation_weight=self.rotation_weight, contrastive_weight=self.contrastive_weight,
                             reconstruction_weight=self.reconstruction_weight)
        positive_finite(temperature=self.temperature)
        require(0.0 <= self.cutout_max_fraction <= 1.0, "cutout_max_fraction", self.cutout_max_fraction,
                 "must be in [0, 1]")


@dataclass(frozen=True)
class SplitConfig:
    num_folds: int = 5                  # validation = fold `fold` of this many; 5-fold CV = folds 0..4
    fold: int = 0
    shuffle: bool = True                # False: dataset order, every num_folds-th case (MONAI tutorials)
    seed: int = 0                       # shuffles cases into folds and draws the label fraction
    label_fraction: float = 1.0         # train on this seeded fraction of the training cases
    use_listed_validation: bool = True  # a dataset file's own "validation" list (BTCV) is the split
    test_fraction: float = 0.2          # held out first, scored once at the end, chosen by case id (the
                                        # same whatever seed, fold or fraction); a labelled "test" list wins

    def __post_init__(self) -> None:
        at_least(2, num_folds=self.num_folds)
        require(0 <= self.fold < self.num_folds, "fold", self.fold, f"must be in 0..{self.num_folds - 1} "
                 f"(num_folds={self.num_folds})")
        require(0.0 < self.label_fraction <= 1.0, "label_fraction", self.label_fraction, "must be in (0, 1]")
        require(0.0 <= self.test_fraction < 1.0, "test_fraction", self.test_fraction, "must be in [0, 1)")


@dataclass(frozen=True)
class SegConfig:
    pretrained: str = ""                # SSL encoder file (ours or MONAI's model_swinvit.pt); "" = scratch
    val_every_steps: int = 100          # sliding-window validation on the full volumes
    sw_batch_size: int = 4              # windows per forward pass in sliding-window inference
    sw_overlap: float = 0.25
    tta_flips: bool = True              # the end-of-run test score averages mirror images along flip_axes, as
                                        # evaluate does; validation (which chooses) stays one pass, half the time
    largest_component: bool = True      # validation chooses which classes keep only their largest connected
                                        # component (where that raises their Dice; nnU-Net's rule); the model
                                        # file records them, the test score and evaluate apply them
    pos_neg_ratio: float = 1.0          # crops centred on foreground : background
    crop_class_ratios: tuple[float, ...] = ()  # () = pos_neg_ratio; else crops centred on each class with
                                        # these weights, background first, one per class (MONAI's
                                        # RandCropByLabelClassesd): small organs get their share
    flip_axes: tuple[int, ...] = (0,)   # random flips (p 0.5 each); axis 0 = left-right. Flipping
                                        # A-P or S-I changes what anterior/posterior labels mean
    rotate_degrees: float = 15.0        # random rotation about each axis, up to this (p 0.2)
    intensity_jitter: float = 0.1       # random intensity scale and shift, up to this (p 0.5)
    dice_weight: float = 1.0            # DiceCE loss weights
    ce_weight: float = 1.0
    max_minutes: float = 0.0            # stop training after this wall time (0 = num_steps only)
    schedule_within_max_minutes: bool = False  # the cosine decay ends by max_minutes too: it stands at the
                                        # larger of step/num_steps and elapsed/max_minutes, so a CPU slower
                                        # than a preset was sized for does not stop at a high learning rate
    patience_validations: int = 0       # stop once this many validations in a row bring no better Dice
                                        # (0 = never: num_steps, max_minutes); num_steps stays the cap
    freeze_encoder_stages: int = 0      # freeze the patch embedding and the first k-1 Swin stages (0-5)...
    freeze_encoder_steps: int = 0       # ...for this many steps (pretrained features first, then everything)
    pretrained_lr_scale: float = 1.0    # learning rate of the tensors loaded from `pretrained`, relative to
                                        # optim.lr on the same schedule (the paper: 1; lower keeps more of them)
    num_overlay_cases: int = 2          # validation cases drawn as ground truth / prediction overlays
    cpu_bf16: bool = False              # bf16 autocast for training steps on a CPU too, where it computes
                                        # bf16 natively (AVX512-BF16, AMX): ~1.7x faster steps; float32 with
                                        # a warning on other CPUs. Validation stays float32, as evaluate

    def __post_init__(self) -> None:
        at_least(1, val_every_steps=self.val_every_steps, sw_batch_size=self.sw_batch_size)
        at_least(0, freeze_encoder_steps=self.freeze_encoder_steps, num_overlay_cases=self.num_overlay_cases,
                  patience_validations=self.patience_validations)
        require(0 <= self.freeze_encoder_stages <= 5, "freeze_encoder_stages", self.freeze_encoder_stages,
                 "must be 0 (none) to 5 (the patch embedding and all four Swin stages)")
        require(0.0 <= self.sw_overlap < 1.0, "sw_overlap", self.sw_overlap, "must be in [0, 1)")
        require(all(a in (0, 1, 2) for a in self.flip_axes) and len(set(self.flip_axes)) == len(self.flip_axes),
                "flip_axes", self.flip_axes, "spatial axes 0, 1 or 2, each once")
        positive_finite(pretrained_lr_scale=self.pretrained_lr_scale)
        require(not self.crop_class_ratios or (len(self.crop_class_ratios) >= 2 and all(
            math.isfinite(r) and r >= 0 for r in self.crop_class_ratios) and sum(self.crop_class_ratios) > 0),
            "crop_class_ratios", self.crop_class_ratios, "one weight of 0 or more per class, background first, "
            "not all 0; or () for pos_neg_ratio")
        non_negative_finite(pos_neg_ratio=self.pos_neg_ratio, rotate_degrees=self.rotate_degrees,
                             intensity_jitter=self.intensity_jitter, dice_weight=self.dice_weight,
                             ce_weight=self.ce_weight, max_minutes=self.max_minutes)


@dataclass(frozen=True)
class RunConfig:
    name: str = "swinray"               # run name; rerunning with the same name resumes
    storage: str = "outputs"            # a local path, a shared filesystem path (the same on every node)
                                        # or s3://BUCKET/PREFIX (gs://): see swinray.storage
    num_workers: int = 2                # Ray Train workers
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when Ray sees GPUs
    amp_bf16: bool = True               # bf16 autocast: training on GPU only; bench gpu on any device
    checkpoint_every_steps: int = 500
    num_checkpoints_kept: int = 2
    max_failures: int = 3               # worker restarts from the latest checkpoint
    aim_repo: str = ""                  # a folder on the driver's machine; "" = $SWINRAY_AIM_REPO, else <storage>
    experiment: str = ""                # Aim experiment that groups runs (a sweep's trials); "" = name
    seed: int = 0
    ray_address: str = ""               # "" = $RAY_ADDRESS if set, else a new local Ray instance
    dashboard: bool = True              # a local instance's dashboard (127.0.0.1 only); it also serves the
                                        # State API that Ray Train's placement-group cleaner polls

    def __post_init__(self) -> None:
        plain_name("name", self.name)
        check_storage(self.storage, "storage")      # from_dict prefixes the section: run.storage
        at_least(1, num_workers=self.num_workers, checkpoint_every_steps=self.checkpoint_every_steps,
                  num_checkpoints_kept=self.num_checkpoints_kept)
        at_least(0, max_failures=self.max_failures)


# --------------------------------------------------------------------------------------------
# Command configs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreprocessConfig:
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="preprocess"))


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="pretrain"))


@dataclass(frozen=True)
class FinetuneConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(roi_size=(0, 0, 0)))   # the task's ROI
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50, num_steps=2000))
    seg: SegConfig = field(default_factory=SegConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="finetune"))


@dataclass(frozen=True)
class SweepConfig:
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # every trial starts from this
    tasks: tuple[str, ...] = ()         # () = finetune.data; ("all",) = every registry task found as a
                                        # folder of that name under finetune.data.source
    trials: int = 8                     # per task
    search: Literal["tpe", "random"] = "tpe"        # Optuna sampler (seeded)
    scheduler: Literal["asha", "none"] = "asha"     # ASHA stops weak trials at validation rungs
    trial_samples: int = 0              # training samples per trial (all its workers), whatever its batch size
                                        # (steps follow); 0 = the base's steps x batch size x workers
    reduction_factor: int = 3           # ASHA keeps the best 1/reduction_factor at each rung
    rungs: int = 2                      # ASHA's decision points; a trial validates reduction_factor ** rungs
                                        # times at equal sample intervals, the rungs falling on validations
    max_concurrent_trials: int = 0      # 0 = as many as the cluster fits (2 CPUs or 1 GPU per worker)
    seed: int = 0                       # the sampler's seed
    start_points: str = ""              # JSON file: a list of {dotted key: value} trials to evaluate first
    name: str = "sweep"                 # rerunning with the same name restores the sweep
    storage: str = "outputs/sweeps"

    def __post_init__(self) -> None:
        plain_name("name", self.name)
        check_storage(self.storage, "storage")
        at_least(1, trials=self.trials)
        at_least(2, reduction_factor=self.reduction_factor)
        at_least(0, rungs=self.rungs, trial_samples=self.trial_samples,
                  max_concurrent_trials=self.max_concurrent_trials)


@dataclass(frozen=True)
class DoctorConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="doctor"))


@dataclass(frozen=True)
class BenchConfig:
    target: Literal["preprocess", "train", "time-to-dice", "label-efficiency", "sweep", "inference",
                    "gpu"] = "preprocess"
    budget_minutes: float = 22.0        # time-to-dice: the baseline's wall-time budget (ours gets half)
    baseline_log: str = ""              # time-to-dice: reuse the printed log of an earlier baseline run
                                        # on this machine instead of running it again
    pretrained: tuple[str, ...] = ()    # label-efficiency: SSL encoder files, each an arm beside scratch
    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)  # label-efficiency: fractions of the training cases
    finetune_preset: str = "cpu-hippocampus"  # label-efficiency, sweep: how every run fine-tunes
    ssl_set: tuple[str, ...] = ()       # label-efficiency: fine-tuning settings of the SSL arms only, KEY=VALUE
                                        # (seg.pretrained_lr_scale=0.1; several: a=1,b=2); the arms' names carry them
    budget_steps: int = 0               # train: training steps per run; label-efficiency: the cap of each run's
                                        # steps (0 = the preset's); gpu: timed steps per part
                                        # (0 = 20; scaling: 10); sweep: x the preset's
                                        # batch size x workers = samples per trial (0 = the preset's steps)
    sweep_trials: int = 8               # sweep: trials per search strategy
    seeds: int = 3                      # sweep: seeds per search strategy; label-efficiency: per arm and
                                        # fraction (run.seed, run.seed + 1, ...)
    patience_validations: int = 3       # label-efficiency: each run stops after this many validations
                                        # without a better Dice (0 = the cap only)
    rounds: int = 3                     # train, preprocess, inference: alternating baseline/ours runs (speed drifts)
    volume_shape: tuple[int, int, int] = (256, 256, 96)   # inference: the synthetic volume's voxels
    pretrain_preset: str = "default"    # gpu: the model, crops and batch every part runs (the paper's)
    gpu_volume_shape: tuple[int, int, int] = (512, 512, 128)  # gpu: the inference part's synthetic CT volume
    part_seconds: float = 60.0          # gpu: timed steps of each part stop once this is spent
    peak_tflops: float = 0.0            # gpu: the device's peak bf16 TFLOP/s (0 = from the table by its name)
    scaling_workers: int = 0            # gpu: Ray Train workers of the scaling part (0 = 2 on > 1 GPU)
    gpu_parts: tuple[str, ...] = ()     # gpu: the parts to run, by name (() = all)
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "outputs/bench"      # benchmark results (JSON) are written here
    run: RunConfig = field(default_factory=lambda: RunConfig(name="bench"))

    def __post_init__(self) -> None:
        positive_finite(budget_minutes=self.budget_minutes, part_seconds=self.part_seconds)
        non_negative_finite(peak_tflops=self.peak_tflops)
        at_least(0, scaling_workers=self.scaling_workers)
        require(all(side > 0 for side in self.gpu_volume_shape), "gpu_volume_shape", self.gpu_volume_shape,
                 "three positive sides")
        at_least(0, budget_steps=self.budget_steps, patience_validations=self.patience_validations)
        at_least(1, sweep_trials=self.sweep_trials, seeds=self.seeds, rounds=self.rounds)
        require(all(0.0 < f <= 1.0 for f in self.fractions) and bool(self.fractions), "fractions",
                 self.fractions, "one or more label fractions in (0, 1]")
        require(all(s.partition("=")[0].strip() and "=" in s for s in self.ssl_set), "ssl_set", self.ssl_set,
                "fine-tuning settings as KEY=VALUE, e.g. seg.pretrained_lr_scale=0.1")


@dataclass(frozen=True)
class QuickstartConfig:
    preset: str = "debug"               # the preset every step runs with (debug: minutes on a CPU)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="quickstart"))
