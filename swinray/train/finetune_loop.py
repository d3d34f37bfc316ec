"""``train_fn_per_worker`` for fine-tuning: what every Ray Train worker runs.

Each worker trains MONAI's ``SwinUNETR`` with DiceCE on random ROI crops of its shard of the
training cases, and every ``seg.val_every_steps`` validates its share of the validation cases by
sliding-window inference on the whole volumes. Dice sums are all-reduced, so every rank sees the
whole validation set's Dice; rank 0 keeps the best model by mean foreground Dice and reports
checkpoints (whole training state plus the best model file) that a restart or a rerun resumes from.
Each validation also scores the prediction with each class reduced to its largest connected
component; the model file records the classes that gained at its best step (``seg.largest_component``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from monai.losses import DiceCELoss

from swinray.config import FinetuneConfig, ModelConfig
from swinray.data.tasks import task_from_dict
from swinray.models.registry import build_swin_unetr, encoder_stage_parameters
from swinray.models.segmenter import save_segmenter
from swinray.models.weights import load_encoder
from swinray.resolve import RunPaths
from swinray.seg.inference import predict_probabilities
from swinray.seg.metrics import DiceMean, dice_per_case
from swinray.seg.overlay import legend, overlay_pair
from swinray.seg.postprocess import classes_improved, keep_largest_components
from swinray.storage import local_file, write_text
from swinray.tracking import NullTracker, Tracker
from swinray.train.precision import cpu_name, finetune_autocast, float32_bottleneck
from swinray.train.replay import seed_step
from swinray.train.seg_data import StepBatches, load_validation_case
from swinray.train.state import MODEL_FILE, make_optimizer, report, restore, training_state
from swinray.train.steps import seg_forward_backward
from swinray.train.trainer import cached_task, case_files, start_worker

PLACEMENT_GROUP_FILE = "placement_group.id"


def model_kwargs(model: ModelConfig) -> dict:
    """What ``build_swin_unetr`` needs, from a resolved model section; saved in the model file so
    evaluation can rebuild the network."""
    return {"in_channels": model.in_channels, "out_channels": model.out_channels,
            "feature_size": model.feature_size, "window_size": model.window_size}


def split_paths(paths: RunPaths) -> tuple[list[str], list[str], dict]:
    """(training case files, validation case files, task) of a run: its split.json and the cache."""
    return case_files(paths, "training"), case_files(paths, "validation"), cached_task(paths)


@dataclass
class Progress:
    """The loop's own part of the training state (with the model, optimizer and schedule in state.pt)."""
    step: int = 0
    elapsed_s: float = 0.0
    best_dice: float = -1.0
    best_step: int = 0
    best_per_class: list = field(default_factory=list)
    best_per_class_largest_component: list = field(default_factory=list)    # the same step, post-processed
    diverged_step: int = 0


def _validate(model, paths: list[str], cfg: FinetuneConfig, device, use_amp: bool,
              overlays: int) -> tuple[DiceMean, DiceMean | None, list]:
    """This rank's validation cases -> Dice sums (all-reduced), the same with each class reduced to
    its largest component (None without ``seg.largest_component``), and a few (image, truth, pred) slices."""
    model.eval()
    num_classes = cfg.model.out_channels
    dice, pictures = DiceMean(num_classes - 1), []
    kept = DiceMean(num_classes - 1) if cfg.seg.largest_component else None
    for path in paths:
        image, label = load_validation_case(path)
        probs = predict_probabilities(model, image.to(device), cfg.model.roi_size, cfg.seg.sw_batch_size,
                                      cfg.seg.sw_overlap, use_amp)
        pred = probs.argmax(1, keepdim=True).cpu()
        dice.add(dice_per_case(pred, label, num_classes))
        if kept is not None:        # classes independently: each one's Dice is as if only it were post-processed
            kept.add(dice_per_case(keep_largest_components(pred[0], range(1, num_classes))[None], label, num_classes))
        if len(pictures) < overlays:
            pictures.append((image[0, 0].numpy(), label[0, 0].numpy(), pred[0, 0].numpy()))
    model.train()
    for sums in (dice, kept):
        if sums is not None:
            sums.all_reduce(device)
    return dice, kept, pictures


def _record_for_cleanup(run_dir: Path) -> None:
    """Note the workers' placement group: if Tune stops this trial mid-run, the sweep frees it."""
    group = ray.util.get_current_placement_group()
    if group is not None:
        write_text(run_dir / PLACEMENT_GROUP_FILE, group.id.hex())


def _out_of_patience(progress: Progress, step: int, seg) -> bool:
    """Whether ``seg.patience_validations`` validations since the best brought nothing better."""
    return bool(seg.patience_validations) and progress.best_step > 0 and (
        step - progress.best_step >= seg.patience_validations * seg.val_every_steps)


def stop_reason(progress: Progress, step: int, cfg: FinetuneConfig, out_of_time: bool) -> str:
    """Why training ends at ``step`` (the summary's ``stopped_by``), or "" while it goes on."""
    if progress.diverged_step:
        return "diverged"
    if step >= cfg.optim.num_steps:
        return "num_steps"
    if _out_of_patience(progress, step, cfg.seg):
        return "patience"
    return "max_minutes" if out_of_time else ""


def deadline_s(cfg: FinetuneConfig) -> float:
    """Training seconds ``seg.max_minutes`` allows, counted across resumes (infinite when it is 0)."""
    return cfg.seg.max_minutes * 60 if cfg.seg.max_minutes > 0 else float("inf")


def schedule_position(step: int, elapsed_s: float, cfg: FinetuneConfig) -> int:
    """Where the learning-rate schedule stands after ``step`` steps and ``elapsed_s`` training seconds: at
    ``step``, or with ``seg.schedule_within_max_minutes`` as far along as the clock is, if that is further
    (the fraction of ``optim.num_steps`` that ``elapsed_s`` is of ``seg.max_minutes``). A preset sized
    for one CPU then still decays to its end by the deadline on a slower one, rather than stopping
    part-way at a high learning rate; one clearly faster than the preset's pace ends at ``num_steps`` as
    before. Raising ``seg.max_minutes`` on a resume moves the schedule back: a warm restart."""
    if not cfg.seg.schedule_within_max_minutes or cfg.seg.max_minutes <= 0:
        return step
    by_clock = math.floor(cfg.optim.num_steps * min(1.0, elapsed_s / deadline_s(cfg)))
    return min(cfg.optim.num_steps, max(step, by_clock))


def finished_by(metrics: dict, cfg: FinetuneConfig) -> str:
    """Why a run whose latest checkpoint reported ``metrics`` is over under ``cfg``, as its workers
    would decide on resuming it, or "" when it has more to do."""
    progress = Progress(step=metrics.get("step", 0), elapsed_s=metrics.get("elapsed_s", 0.0),
                        best_step=metrics.get("best_step", 0), diverged_step=metrics.get("diverged_step", 0))
    return stop_reason(progress, progress.step, cfg, progress.elapsed_s >= deadline_s(cfg))


def stop_cause(metrics: dict, cfg: FinetuneConfig) -> str:
    """Why a run whose latest checkpoint reported ``metrics`` ended: what its loop said then, else what
    ended it under ``cfg`` (a checkpoint that ends a run only under settings given since)."""
    return metrics.get("stopped_by") or finished_by(metrics, cfg)


def _rank0_clock(elapsed_s: float, device) -> float:
    """Rank 0's training seconds on every rank: all stop at the same step, on the same schedule."""
    clock = torch.tensor([elapsed_s], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(clock, src=0)
    return float(clock.item())


def _schedule_to(scheduler, position: int) -> None:
    """Set the learning rate to the schedule's value at ``position`` (one past where it stood, unless
    ``schedule_position`` moved it on). A resume's first step runs at the rate the optimizer saved;
    each step after it places the schedule anew from the step and the clock."""
    scheduler.last_epoch = position - 1
    scheduler.step()


def train_fn_per_worker(config: dict) -> None:
    cfg, paths, rank, world, device = start_worker(config, FinetuneConfig)
    train_paths, val_paths, task = split_paths(paths)
    kwargs = model_kwargs(cfg.model)

    net = build_swin_unetr(**kwargs, drop_path_rate=cfg.model.drop_path_rate,
                           use_checkpoint=cfg.model.gradient_checkpointing)
    pretrained = []
    if cfg.seg.pretrained:
        loaded = load_encoder(net, local_file(cfg.seg.pretrained), adapt_channels=True)  # a URI: downloaded
        if rank == 0:
            print(f"[swinray] pretrained encoder {cfg.seg.pretrained}: {loaded.summary()}", flush=True)
        pretrained = loaded.parameters(net)
    use_amp, amp_warning = finetune_autocast(cfg, device)
    if use_amp and device.type == "cpu":
        float32_bottleneck(net)
    frozen = encoder_stage_parameters(net, cfg.seg.freeze_encoder_stages) if cfg.seg.freeze_encoder_steps else []
    model = ray.train.torch.prepare_model(net)
    optimizer, scheduler = make_optimizer(model, cfg.optim, pretrained, cfg.seg.pretrained_lr_scale)
    restored = restore(net, optimizer, scheduler, files=(MODEL_FILE,)) or {}
    best_state = restored.pop(MODEL_FILE)["state_dict"] if restored else None
    restored.pop("aim_run_hash", None)      # checkpoints from when workers wrote to Aim themselves
    progress = Progress(**restored)
    step, elapsed_before = progress.step, progress.elapsed_s

    # Each rank takes every world-th case, none dropped
    train_paths, val_paths = train_paths[rank::world], val_paths[rank::world]
    batch_of = StepBatches(train_paths, cfg.model.roi_size, cfg.seg, cfg.optim.batch_size, cfg.run.seed, rank,
                           task_from_dict(task).label_pairs)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.seg.dice_weight,
                         lambda_ce=cfg.seg.ce_weight)
    tracker = NullTracker()
    if rank == 0:
        tracker = Tracker(paths.run_dir, resumed_at=step)     # the driver copies it into Aim
        _record_for_cleanup(Path(paths.run_dir))
    infer_amp = cfg.run.amp_bf16 and device.type == "cuda"    # validation on a CPU: float32, as evaluate
    note = ""                           # in rank 0's first row logged: the driver shows it
    if rank == 0 and amp_warning:
        cpu = cpu_name()
        note = f"{amp_warning} ({cpu})" if cpu else amp_warning
        print(f"[swinray] {cfg.run.name}: {note}", flush=True)    # a sweep's trials: with --verbose
    started = time.perf_counter()
    deadline = deadline_s(cfg)
    metrics, stopped_by = {}, stop_reason(progress, step, cfg, elapsed_before >= deadline)
    stop = bool(stopped_by)

    def checkpoint() -> None:
        """Report metrics on every rank; rank 0 attaches the training state and the best model so far."""
        state, files = None, {}
        if rank == 0:
            state = training_state(net, optimizer, scheduler, **vars(progress))
            best = build_swin_unetr(**kwargs)
            best.load_state_dict(best_state if best_state is not None else net.state_dict())
            best_metrics = {"val_dice": progress.best_dice, "step": progress.best_step,
                            "val_dice_per_class": progress.best_per_class,
                            "val_dice_per_class_largest_component": progress.best_per_class_largest_component}
            post = classes_improved(progress.best_per_class, progress.best_per_class_largest_component) \
                if cfg.seg.largest_component else []
            files = {MODEL_FILE: lambda path: save_segmenter(best, path, kwargs, cfg.model.roi_size, task,
                                                             best_metrics, cfg.seg.flip_axes, post)}
        tracker.checkpointed()
        summary = {k: metrics[k] for k in ("loss", "val_dice", "elapsed_s") if k in metrics}  # the rest: Aim, jsonl
        report({**summary, "step": step, "samples": step * cfg.optim.batch_size * world,  # all workers
                "best_val_dice": progress.best_dice, "best_step": progress.best_step,
                "diverged_step": progress.diverged_step, "stopped_by": stopped_by, "train_bf16": use_amp},
               state, files)

    while not stop:
        seed_step(cfg.run.seed, rank, step)         # drop-path: the same draws when this step is redone
        batch = batch_of(step)
        began = time.perf_counter()
        image, label = batch["image"].to(device), batch["label"].to(device)
        loss = seg_forward_backward(model, loss_fn, image, label, use_amp)
        if step < cfg.seg.freeze_encoder_steps:
            for p in frozen:            # after DDP's all-reduce; AdamW skips a None grad entirely
                p.grad = None
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
        # The all-reduced gradient norm is the same on every rank: all stop together on NaN/inf.
        diverged = not math.isfinite(float(grad_norm))
        if not diverged:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = elapsed_before + time.perf_counter() - started
        if deadline < float("inf"):
            elapsed = _rank0_clock(elapsed, device)
        out_of_time = elapsed > deadline
        if not diverged:
            _schedule_to(scheduler, schedule_position(step, elapsed, cfg))
        stopped_by = "diverged" if diverged else "num_steps" if step >= cfg.optim.num_steps else (
            "max_minutes" if out_of_time else "")
        stop = bool(stopped_by)
        seconds = time.perf_counter() - began
        metrics = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "samples_per_s": world * cfg.optim.batch_size / seconds, "elapsed_s": elapsed,
                   **({"note": note} if note else {})}
        note = ""
        if diverged:
            progress.diverged_step = step
            if rank == 0:
                print(f"[swinray] {cfg.run.name}: the gradients became {float(grad_norm)} at step {step} "
                      f"(loss {metrics['loss']}, optim.lr={cfg.optim.lr}); the run stops as diverged", flush=True)
        elif stop or step % cfg.seg.val_every_steps == 0:
            dice, kept, pictures = _validate(net, val_paths, cfg, device, infer_amp,
                                             cfg.seg.num_overlay_cases if rank == 0 else 0)
            metrics.update(val_dice=dice.mean(), elapsed_s=elapsed_before + time.perf_counter() - started,
                           **{f"val_dice_{name}": d for name, d in zip(task["label_names"][1:], dice.per_class())})
            if kept is not None:    # each class as if only it were post-processed; not val_dice_*, which
                                    # names the classes for the report
                metrics.update({f"val_largest_component_dice_{name}": d
                                for name, d in zip(task["label_names"][1:], kept.per_class())})
            if dice.mean() > progress.best_dice:      # all-reduced: every rank agrees
                progress.best_dice, progress.best_step = dice.mean(), step
                progress.best_per_class = dice.per_class()
                progress.best_per_class_largest_component = kept.per_class() if kept is not None else []
                if rank == 0:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            if not stop and _out_of_patience(progress, step, cfg.seg):
                stop, stopped_by = True, "patience"
                if rank == 0:
                    print(f"[swinray] {cfg.run.name}: no better validation Dice in {cfg.seg.patience_validations} "
                          f"validations since step {progress.best_step} ({progress.best_dice:.4f}); "
                          f"stopping at step {step} (seg.patience_validations)", flush=True)
            for i, (img, truth, pred) in enumerate(pictures):
                tracker.log_image(f"val_overlay_{i}", overlay_pair(img, truth, pred), step,
                                  caption="ground truth | prediction; " + legend(task["label_names"]))
        tracker.log(metrics, step)
        if stop or step % cfg.run.checkpoint_every_steps == 0 or "val_dice" in metrics:
            progress.step, progress.elapsed_s = step, metrics["elapsed_s"]
            checkpoint()
    if not metrics:  # a rerun of a finished run: report where it stands
        if rank == 0:
            print(f"[swinray] {cfg.run.name}: already finished at step {step} ({stopped_by})", flush=True)
        report({"step": step, "samples": step * cfg.optim.batch_size * world, "best_val_dice": progress.best_dice,
                "diverged_step": progress.diverged_step, "stopped_by": stopped_by})
    tracker.close()
