"""bench gpu without a GPU: the device choice says why CUDA is unusable, peak rates by device name,
and the GPU code paths a CPU can run (bf16 autocast, gradient checkpointing) on the shared steps."""
import pytest
import torch

from swinray.bench.device import choose_device, peak_tflops
from swinray.bench.gpu import needs_per_gpu
from swinray.config import PretextConfig
from swinray.errors import ConfigError
from swinray.models.registry import build_ssl_head, build_swin_unetr
from swinray.train.steps import seg_forward_backward, ssl_forward_backward


def test_cuda_hidden_by_cuda_visible_devices_is_a_clear_config_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if torch.cuda.is_available():                    # a GPU machine: the variable is read at CUDA init
        pytest.skip("CUDA initialised before the variable was set")
    with pytest.raises(ConfigError, match="run.device=cuda: CUDA_VISIBLE_DEVICES='' hides every GPU"):
        choose_device("cuda")


def test_without_a_gpu_auto_measures_the_cpu_only_for_a_small_model(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert choose_device("auto", small_model=True) == choose_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="run.device=auto: .*; measure the CPU with run.device=cpu"):
        choose_device("auto")


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0),
                                        ("NVIDIA A10G", 70.0), ("NVIDIA L40S", 362.0), ("Tesla T4", None)])
def test_the_peak_bf16_rate_comes_from_the_longest_matching_device_name(name, peak):
    assert peak_tflops(name, 0.0) == peak


def test_a_peak_rate_setting_wins_over_the_table():
    assert peak_tflops("NVIDIA A100-SXM4-80GB", 250.0) == 250.0


def test_cpu_cores_per_device_divide_its_demand_by_one_cores_supply():
    parts = {"pretrain": {"samples_per_s": 12.0}, "data_supply_pretrain": {"samples_per_s_per_core": 4.0},
             "finetune": {"error": "RuntimeError: out of memory"},
             "data_supply_finetune": {"samples_per_s_per_core": 9}}
    assert needs_per_gpu(parts) == {"pretrain": 3.0}


def recorder(module: torch.nn.Module) -> list:
    """The output dtypes of ``module``'s forward calls, one entry per call."""
    calls = []
    module.register_forward_hook(lambda _, __, out: calls.append(out.dtype))
    return calls


def test_the_ssl_step_runs_under_bf16_autocast_with_gradient_checkpointing_on_a_cpu():
    torch.manual_seed(0)
    model = build_ssl_head(in_channels=1, feature_size=12, roi_size=(64, 64, 64), use_checkpoint=True, window_size=4)
    calls = recorder(model.swinViT.layers1[0].blocks[0].attn.qkv)
    loss, parts, _, _ = ssl_forward_backward(model, torch.randn(2, 1, 64, 64, 64), PretextConfig(),
                                             torch.Generator().manual_seed(0), use_amp=True)
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and set(parts) == {"rot", "contrast", "recon"}
    assert calls == [torch.bfloat16, torch.bfloat16]      # under autocast; run again in backward: checkpointed
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_without_autocast_or_checkpointing_the_same_step_runs_once_in_float32():
    torch.manual_seed(0)
    model = build_ssl_head(in_channels=1, feature_size=12, roi_size=(64, 64, 64), window_size=4)
    calls = recorder(model.swinViT.layers1[0].blocks[0].attn.qkv)
    ssl_forward_backward(model, torch.randn(2, 1, 64, 64, 64), PretextConfig(), torch.Generator().manual_seed(0),
                         use_amp=False)
    assert calls == [torch.float32]


def test_the_segmentation_step_runs_under_bf16_autocast_with_gradient_checkpointing_on_a_cpu():
    from monai.losses import DiceCELoss
    torch.manual_seed(0)
    model = build_swin_unetr(in_channels=1, out_channels=3, feature_size=12, use_checkpoint=True, window_size=4)
    calls = recorder(model.swinViT.layers1[0].blocks[0].attn.qkv)
    image, label = torch.randn(1, 1, 64, 64, 64), torch.randint(0, 3, (1, 1, 64, 64, 64))
    loss = seg_forward_backward(model, DiceCELoss(to_onehot_y=True, softmax=True), image, label, use_amp=True)
    assert torch.isfinite(loss) and calls == [torch.bfloat16, torch.bfloat16]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
