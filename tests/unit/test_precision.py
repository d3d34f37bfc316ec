"""When fine-tuning steps run in bf16: always on a GPU, on a CPU only when asked and where the CPU has
native bf16; and the bottleneck block that stays float32 under CPU autocast."""
import pytest
import torch

from swinray.config import FinetuneConfig, RunConfig, SegConfig, apply_overrides, parse_assignments
from swinray.models.registry import build_swin_unetr
from swinray.train.precision import finetune_autocast, float32_bottleneck

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cfg(amp_bf16=True, cpu_bf16=False):
    return FinetuneConfig(run=RunConfig(amp_bf16=amp_bf16), seg=SegConfig(cpu_bf16=cpu_bf16))


def test_a_gpu_trains_in_bf16_and_a_cpu_in_float32_unless_asked():
    assert finetune_autocast(cfg(), CUDA) == (True, "")
    assert finetune_autocast(cfg(), CPU, native_bf16=lambda: True) == (False, "")
    assert finetune_autocast(cfg(cpu_bf16=True), CPU, native_bf16=lambda: True) == (True, "")


def test_amp_off_wins_everywhere():
    assert finetune_autocast(cfg(amp_bf16=False), CUDA) == (False, "")
    assert finetune_autocast(cfg(amp_bf16=False, cpu_bf16=True), CPU, native_bf16=lambda: True) == (False, "")


def test_asking_for_bf16_on_a_cpu_without_it_stays_float32_and_says_why():
    use, warning = finetune_autocast(cfg(cpu_bf16=True), CPU, native_bf16=lambda: False)
    assert use is False
    assert "seg.cpu_bf16" in warning and "float32" in warning


def test_the_bottleneck_runs_in_float32_under_cpu_autocast_and_the_weights_keep_their_names():
    torch.manual_seed(0)
    net = build_swin_unetr(in_channels=1, out_channels=3, feature_size=12, window_size=4)
    keys = list(net.state_dict())
    seen = {}
    net.encoder10.register_forward_hook(lambda m, i, out: seen.update(bottleneck=out.dtype))
    net.decoder5.register_forward_hook(lambda m, i, out: seen.update(decoder=out.dtype))
    x = torch.rand(1, 1, 64, 64, 64)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x).float().sum().backward()
        return dict(seen)

    assert run() == {"bottleneck": torch.bfloat16, "decoder": torch.bfloat16}
    float32_bottleneck(net)
    assert run() == {"bottleneck": torch.float32, "decoder": torch.bfloat16}
    assert list(net.state_dict()) == keys


def test_the_pinned_torch_has_the_probes_for_native_bf16():
    """They are private: if a torch upgrade drops them, every CPU would read as having no native bf16."""
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)


@pytest.mark.parametrize("value", ["true", "false"])
def test_cpu_bf16_is_a_fine_tuning_setting(value):
    base = FinetuneConfig()
    assert apply_overrides(base, parse_assignments([f"seg.cpu_bf16={value}"], base)).seg.cpu_bf16 is (value == "true")
