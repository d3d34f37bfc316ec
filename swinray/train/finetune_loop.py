"""``train_fn_per_worker`` for fine-tuning: what every Ray Train worker runs.

Each worker trains MONAI's ``SwinUNETR`` with DiceCE on random ROI crops of its shard of the
training cases, and every ``seg.val_every_steps`` validates its share of the validation cases by
sliding-window inference on the whole volumes. Dice sums are all-reduced, so every rank sees the
whole validation set's Dice; rank 0 keeps the best model by mean foreground Dice and reports
checkpoints (whole training state plus the best model file) that a restart or a rerun resumes from.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss
from monai.optimizers import WarmupCosineSchedule

from models.registry import build_swin_unetr, encoder_stage_parameters
from models.segmenter import save_segmenter
from models.weights import load_encoder
from swinray.config import FinetuneConfig
from swinray.data.cache import write_text
from swinray.seg.inference import predict_probabilities
from swinray.seg.metrics import DiceMean, dice_per_case
from swinray.seg.overlay import legend, overlay_pair
from swinray.storage import local_file
from swinray.tracking import NullTracker, Tracker
from swinray.train.seg_data import load_validation_case, train_transforms
from swinray.train.trainer import start_worker

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


def _restore(model, optimizer, scheduler) -> dict:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "best_dice": -1.0, "best_step": 0, "elapsed_s": 0.0, "aim_run_hash": ""}
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        best = torch.load(Path(directory) / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state.pop("model"))
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(state.pop("torch_rng"))
    return {**state, "best_state": best}


def _validate(model, paths: list[str], cfg: FinetuneConfig, roi, num_classes: int, device, use_amp: bool,
              overlays: int) -> tuple[DiceMean, list]:
    """This rank's validation cases -> Dice sums (all-reduced) and a few (image, truth, pred) slices."""
    model.eval()
    dice, pictures = DiceMean(num_classes - 1), []
    for path in paths:
        image, label = load_validation_case(path)
        probs = predict_probabilities(model, image.to(device), roi, cfg.seg.sw_batch_size, cfg.seg.sw_overlap,
                                      use_amp)
        pred = probs.argmax(1, keepdim=True).cpu()
        dice.add(dice_per_case(pred, label, num_classes))
        if len(pictures) < overlays:
            pictures.append((image[0, 0].numpy(), label[0, 0].numpy(), pred[0, 0].numpy()))
    model.train()
    dice.all_reduce(device)
    return dice, pictures


PLACEMENT_GROUP_FILE = "placement_group.id"
AIM_RUN_FILE = "aim_run.hash"


def _record_for_cleanup(run_dir: Path, tracker) -> None:
    """Note the workers' placement group and the Aim run: if Tune stops this trial mid-run, the
    sweep frees the one and closes the other."""
    group = ray.util.get_current_placement_group()
    if group is not None:
        write_text(run_dir / PLACEMENT_GROUP_FILE, group.id.hex())
    if tracker.run_hash:
        write_text(run_dir / AIM_RUN_FILE, tracker.run_hash)


def _stop_now(deadline_passed: bool, device) -> bool:
    """Every rank stops at the same step: rank 0's clock decides."""
    flag = torch.tensor([float(deadline_passed)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def train_fn_per_worker(config: dict) -> None:
    cfg, rank, world, device = start_worker(config, FinetuneConfig)
    roi, num_classes, task = config["roi_size"], config["model"]["out_channels"], config["task"]

    net = build_swin_unetr(**config["model"], drop_path_rate=cfg.model.drop_path_rate,
                           use_checkpoint=cfg.model.gradient_checkpointing)
    if cfg.seg.pretrained:
        report = load_encoder(net, local_file(cfg.seg.pretrained), adapt_channels=True)  # a URI: downloaded
        if rank == 0:
            print(f"[swinray] pretrained encoder {cfg.seg.pretrained}: {report.summary()}", flush=True)
    frozen = encoder_stage_parameters(net, cfg.seg.freeze_encoder_stages) if cfg.seg.freeze_encoder_steps else []
    model = ray.train.torch.prepare_model(net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=cfg.optim.warmup_steps, t_total=cfg.optim.num_steps)
    state = _restore(net, optimizer, scheduler)
    best_state = state.pop("best_state", None)
    step, elapsed_before = state["step"], state["elapsed_s"]

    # Paths, not Ray Data shards: streaming_split(equal=True) would drop the remainder cases.
    train_paths, val_paths = config["train_paths"][rank::world], config["val_paths"][rank::world]
    transform = train_transforms(roi, cfg.seg)
    transform.set_random_state(seed=(cfg.run.seed * 1009 + rank) * 100_003 + step)
    dataset = CacheDataset([{"path": p} for p in train_paths], transform, progress=False, copy_cache=False)
    # In-process loading: a random crop of a cached case takes ~15 ms, and a prefetch thread or
    # process competing with the model for 2 cores measured 35% slower steps.
    loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, shuffle=True, num_workers=0)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.seg.dice_weight,
                         lambda_ce=cfg.seg.ce_weight)
    tracker = NullTracker()
    if rank == 0:
        tracker = Tracker(Path(config["run_dir"]) / "metrics.jsonl", config["aim_repo"], cfg.run.experiment or cfg.run.name,
                          params=config["cfg"], run_hash=state["aim_run_hash"] or None, name=cfg.run.name)
        _record_for_cleanup(Path(config["run_dir"]), tracker)
    use_amp = cfg.run.amp_bf16 and device.type == "cuda"
    started = time.perf_counter()
    deadline = cfg.seg.max_minutes * 60 if cfg.seg.max_minutes > 0 else float("inf")
    metrics, stop = {}, step >= cfg.optim.num_steps or elapsed_before >= deadline or bool(state.get("diverged_step"))

    while not stop:
        for batch in loader:
            began = time.perf_counter()
            image, label = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(model(image).float(), label)
            loss.backward()
            if step < cfg.seg.freeze_encoder_steps:
                for p in frozen:            # after DDP's all-reduce; AdamW skips a None grad entirely
                    p.grad = None
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
            # The all-reduced gradient norm is the same on every rank: all stop together on NaN/inf.
            diverged = not math.isfinite(float(grad_norm))
            if not diverged:
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = elapsed_before + time.perf_counter() - started
            stop = diverged or step >= cfg.optim.num_steps or (
                deadline < float("inf") and _stop_now(elapsed > deadline, device))
            seconds = time.perf_counter() - began
            metrics = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "samples_per_s": world * cfg.optim.batch_size / seconds, "elapsed_s": elapsed}
            if diverged:
                state["diverged_step"] = step
                if rank == 0:
                    print(f"[swinray] {cfg.run.name}: the gradients became {float(grad_norm)} at step {step} "
                          f"(loss {metrics['loss']}, optim.lr={cfg.optim.lr}); the run stops as diverged", flush=True)
            elif stop or step % cfg.seg.val_every_steps == 0:
                dice, pictures = _validate(net, val_paths, cfg, roi, num_classes, device, use_amp,
                                           cfg.seg.num_overlay_cases if rank == 0 else 0)
                metrics.update(val_dice=dice.mean(), elapsed_s=elapsed_before + time.perf_counter() - started,
                               **{f"val_dice_{name}": d for name, d in zip(task["label_names"][1:], dice.per_class())})
                if rank == 0 and dice.mean() > state["best_dice"]:
                    state.update(best_dice=dice.mean(), best_step=step,
                                 best_per_class=dice.per_class())
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
                for i, (img, truth, pred) in enumerate(pictures):
                    tracker.log_image(f"val_overlay_{i}", overlay_pair(img, truth, pred), step,
                                      caption="ground truth | prediction; " + legend(task["label_names"]))
            tracker.log(metrics, step)
            if stop or step % cfg.run.checkpoint_every_steps == 0 or "val_dice" in metrics:
                _checkpoint(config, cfg, net, optimizer, scheduler, state, best_state, step,
                            metrics["elapsed_s"], tracker, metrics, rank)
            if stop:
                break
    if not metrics:  # a rerun of a finished run: report where it stands
        ray.train.report({"step": step, "samples": step * cfg.optim.batch_size, "best_val_dice": state["best_dice"],
                          "aim_error": "",
                          "diverged_step": state.get("diverged_step", 0)}, checkpoint=None)
    tracker.close()


def _checkpoint(config, cfg, net, optimizer, scheduler, state, best_state, step, elapsed, tracker, metrics,
                rank) -> None:
    """Report metrics on every rank; rank 0 attaches the training state and the best model so far."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                        "step": step, "elapsed_s": elapsed, "aim_run_hash": tracker.run_hash or "",
                        **{k: v for k, v in state.items() if k not in ("step", "elapsed_s", "aim_run_hash")}},
                       Path(directory) / STATE_FILE)
            best = build_swin_unetr(**config["model"])
            best.load_state_dict(best_state if best_state is not None else net.state_dict())
            save_segmenter(best, Path(directory) / MODEL_FILE, config["model"], config["roi_size"],
                           config["task"], {"val_dice": state["best_dice"], "step": state["best_step"],
                                            "val_dice_per_class": state.get("best_per_class", [])})
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        summary = {k: metrics[k] for k in ("loss", "val_dice", "elapsed_s") if k in metrics}  # the rest: Aim, jsonl
        tracker.checkpointed()
        ray.train.report({**summary, "step": step, "samples": step * cfg.optim.batch_size,  # per worker
                          "best_val_dice": state["best_dice"],
                          "best_step": state["best_step"], "aim_error": tracker.aim_error or "",
                          "diverged_step": state.get("diverged_step", 0)},
                         checkpoint=checkpoint)
