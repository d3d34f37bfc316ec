"""bench gpu without a GPU: the device choice says why CUDA is unusable, peak rates by device name,
and the GPU code paths a CPU can run (bf16 autocast, gradient checkpointing) on the shared steps."""
import pytest
import torch

from swinray.bench.gpu import choose_device, needs_per_gpu, peak_tflops
from swinray.config import PretextConfig
from swinray.errors import ConfigError
from swinray.models.registry import build_ssl_head, build_swin_unetr
from swinray.train.steps import seg_forward_backward, ssl_forward_backward


def test_cuda_hidden_by_cuda_visible_devices_is_a_clear_config_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if torch.cuda.is_available():                    # a GPU machine: the variable is read at CUDA init
        pytest.skip("CUDA initialised before the variable was set")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES='' hides every GPU; set run.device=cpu or auto"):
        choose_device("cuda")


def test_auto_and_cpu_choose_the_cpu_where_no_gpu_is_usable():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert choose_device("auto") == choose_device("cpu") == torch.device("cpu")


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


def test_the_ssl_step_runs_under_bf16_autocast_with_gradient_checkpointing_on_a_cpu():
    torch.manual_seed(0)
    model = build_ssl_head(in_channels=1, feature_size=12, roi_size=(64, 64, 64), use_checkpoint=True, window_size=4)
    loss, parts, batch, halves = ssl_forward_backward(model, torch.randn(2, 1, 64, 64, 64), PretextConfig(),
                                                      torch.Generator().manual_seed(0), use_amp=True)
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and set(parts) == {"rot", "contrast", "recon"}
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_the_segmentation_step_runs_under_bf16_autocast_with_gradient_checkpointing_on_a_cpu():
    from monai.losses import DiceCELoss
    torch.manual_seed(0)
    model = build_swin_unetr(in_channels=1, out_channels=3, feature_size=12, use_checkpoint=True, window_size=4)
    image, label = torch.randn(1, 1, 64, 64, 64), torch.randint(0, 3, (1, 1, 64, 64, 64))
    loss = seg_forward_backward(model, DiceCELoss(to_onehot_y=True, softmax=True), image, label, use_amp=True)
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
