"""`seg.pretrained_lr_scale`: the tensors loaded from SSL weights learn at a fraction of the learning
rate, on the same schedule; everything else (the decoder) at the full rate."""
import pytest
import torch

from swinray.config import ConfigError, OptimConfig, SegConfig
from swinray.models.registry import build_swin_unetr
from swinray.models.weights import encoder_state_dict, load_encoder
from swinray.train.state import make_optimizer


@pytest.fixture(scope="module")
def pretrained_net():
    """A Swin UNETR with an encoder loaded from another network's weights, and the load's report."""
    torch.manual_seed(0)
    donor = build_swin_unetr(in_channels=1, out_channels=3, feature_size=12, window_size=4)
    net = build_swin_unetr(in_channels=1, out_channels=3, feature_size=12, window_size=4)
    return net, load_encoder(net, encoder_state_dict(donor))


def ids(params):
    return {id(p) for p in params}


def test_the_scaled_parameters_are_exactly_the_loaded_encoder(pretrained_net):
    net, report = pretrained_net
    assert ids(report.parameters(net)) == ids(net.swinViT.parameters())
    assert not ids(report.parameters(net)) & ids(net.decoder1.parameters())


def test_pretrained_layers_follow_the_schedule_at_a_fraction_of_the_rate(pretrained_net):
    net, report = pretrained_net
    optim = OptimConfig(lr=1e-3, warmup_steps=5, num_steps=20)
    optimizer, scheduler = make_optimizer(net, optim, report.parameters(net), lr_scale=0.1)
    rest, scaled = optimizer.param_groups
    assert ids(scaled["params"]) == ids(net.swinViT.parameters())
    assert ids(rest["params"]) | ids(scaled["params"]) == ids(net.parameters())
    for _ in range(12):                 # through the warm-up and into the cosine decay
        optimizer.step()
        scheduler.step()
        full, slow = scheduler.get_last_lr()
        assert slow == pytest.approx(0.1 * full) and 0 < full <= optim.lr


def test_adam_moves_a_pretrained_weight_by_the_scaled_rate():
    """Adam's first step moves every weight by about its learning rate, whatever the gradient's size."""
    decoder, encoder = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    model = torch.nn.ParameterList([decoder, encoder])
    optimizer, _ = make_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=0, num_steps=10),
                                  [encoder], lr_scale=0.25)
    (decoder.sum() * 100 + encoder.sum() * 100).backward()
    optimizer.step()
    assert decoder.detach().abs() == pytest.approx(torch.full((4,), 1e-2), rel=1e-3)
    assert encoder.detach().abs() == pytest.approx(torch.full((4,), 0.25e-2), rel=1e-3)


def test_the_default_keeps_one_parameter_group_as_checkpoints_before_the_setting(pretrained_net):
    net, report = pretrained_net
    optimizer, _ = make_optimizer(net, OptimConfig(), report.parameters(net), lr_scale=SegConfig().pretrained_lr_scale)
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan")])
def test_a_scale_that_is_not_above_zero_is_refused_by_name(scale):
    with pytest.raises(ConfigError, match="pretrained_lr_scale"):
        SegConfig(pretrained_lr_scale=scale)
