"""``seg.schedule_within_max_minutes``: a preset sized in steps for one CPU still ends its cosine decay by
its ``seg.max_minutes`` on a slower CPU, where the clock would otherwise stop it part-way, at a high
learning rate; on a CPU fast enough for its ``optim.num_steps`` nothing changes."""
import pytest
import torch
import torch.distributed as dist
from monai.optimizers import WarmupCosineSchedule

from conftest import run_gloo_ranks
from swinray.config import FinetuneConfig, apply_overrides
from swinray.train.finetune_loop import _rank0_clock, _schedule_to, schedule_position

TIMED = apply_overrides(FinetuneConfig(), {"optim.num_steps": 2800, "optim.warmup_steps": 50,
                                           "seg.max_minutes": 56, "seg.schedule_within_max_minutes": True})
HOUR = 56 * 60


@pytest.mark.parametrize("step, elapsed_s, position", [
    (1000, HOUR / 2, 1400),         # a slow CPU: half the time gone at step 1,000, so halfway along
    (2000, HOUR / 2, 2000),         # a fast one: the steps are ahead of the clock, as without the setting
    (1700, HOUR + 1, 2800),         # past the deadline: the end of the schedule, never beyond it
    (2800, HOUR / 4, 2800),
])
def test_the_schedule_stands_at_the_step_or_the_clock_whichever_is_further(step, elapsed_s, position):
    assert schedule_position(step, elapsed_s, TIMED) == position


def test_without_the_setting_or_a_deadline_the_schedule_follows_the_steps():
    assert schedule_position(1000, HOUR / 2, apply_overrides(TIMED, {"seg.schedule_within_max_minutes": False})) == 1000
    assert schedule_position(1000, HOUR / 2, apply_overrides(TIMED, {"seg.max_minutes": 0})) == 1000


def _schedule(num_steps=100):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=10, t_total=num_steps)
    optimizer.step()                                                    # as in training: a step, then the schedule
    return optimizer, scheduler


def test_a_step_the_clock_moved_on_takes_the_schedules_rate_there_and_ends_at_zero():
    optimizer, scheduler = _schedule()
    _schedule_to(scheduler, 1)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)            # warm-up, one step in
    _schedule_to(scheduler, 60)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 * scheduler.lr_lambda(60))
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
    _schedule_to(scheduler, 100)
    assert scheduler.get_last_lr()[0] == 0.0


def test_the_rate_the_clock_set_is_in_the_optimizers_saved_state_and_the_next_position_goes_on_from_it():
    optimizer, scheduler = _schedule()
    _schedule_to(scheduler, 60)                                         # the clock had moved it on
    saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    resumed_optimizer, resumed = _schedule()
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    at_60 = 1e-3 * resumed.lr_lambda(60)
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(at_60)   # the first step's rate
    _schedule_to(resumed, 70)
    at_70 = resumed_optimizer.param_groups[0]["lr"]
    assert at_70 == pytest.approx(1e-3 * resumed.lr_lambda(70)) and at_70 < at_60


def _rank_reads_the_clock(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=3)
    try:
        # rank 1 alone is past the deadline; rank 0's clock is neither the least nor the greatest
        own = {0: HOUR - 1.0, 1: HOUR + 1.0, 2: HOUR - 100.0}[rank]
        elapsed = _rank0_clock(own, torch.device("cpu"))
        torch.save([elapsed, elapsed > HOUR, schedule_position(1000, elapsed, TIMED)], f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_every_rank_takes_rank_0s_clock_so_all_stop_at_the_same_step_on_the_same_schedule(tmp_path):
    run_gloo_ranks(_rank_reads_the_clock, (str(tmp_path / "store"), str(tmp_path)), world=3)
    on_rank = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(3)]
    assert on_rank == [[HOUR - 1.0, False, 2799]] * 3
