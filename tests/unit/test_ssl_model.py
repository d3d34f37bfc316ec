"""The SSL network and weight transfer: gradients reach every part; the encoder moves intact."""
import pytest
import torch

from models.registry import build_model, build_ssl_head
from models.weights import load_encoder, save_encoder
from swinray.pretext.losses import ssl_loss
from swinray.pretext.views import make_ssl_batch

ROI = (64, 64, 64)


@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    torch.manual_seed(0)
    head = build_ssl_head(in_channels=1, feature_size=12, roi_size=ROI)
    batch = make_ssl_batch(torch.rand(2, 1, *ROI), 0.3, torch.Generator().manual_seed(0))
    out = head(torch.cat([batch["view1"], batch["view2"]]))
    halves = [t.chunk(2) for t in out]
    loss, _ = ssl_loss(tuple(h[0] for h in halves), tuple(h[1] for h in halves), batch, (1, 1, 1), 0.5)
    loss.backward()
    path = tmp_path_factory.mktemp("weights") / "encoder.pt"
    save_encoder(head, path)
    return head, out, path


def test_output_shapes(trained_head):
    _, (rot, con, rec), _ = trained_head
    assert rot.shape == (4, 4) and con.shape == (4, 512) and rec.shape == (4, 1, *ROI)


def test_gradients_reach_every_head_and_the_encoder(trained_head):
    head, _, _ = trained_head
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in (head.rotation_head, head.contrastive_head, head.decoder, head.swinViT.patch_embed):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0


def test_exported_encoder_loads_into_swin_unetr_with_nothing_missing(trained_head):
    head, _, path = trained_head
    model = build_model("swin_unetr", in_channels=1, out_channels=14, feature_size=12)
    report = load_encoder(model, path)
    assert not report.missing and not report.unexpected and not report.shape_mismatched
    assert len(report.loaded) == len(model.swinViT.state_dict()) and report.not_in_encoder > 0
    for key, value in head.swinViT.state_dict().items():
        assert torch.equal(model.swinViT.state_dict()[key], value), key


def test_monai_released_layout_loads_and_extra_heads_are_reported(trained_head, tmp_path):
    head, _, _ = trained_head
    state = {f"module.{k}": v for k, v in head.swinViT.state_dict().items()}
    state["module.rotation_head.weight"] = torch.zeros(4, 192)
    state["module.norm.weight"] = torch.zeros(192)
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    report = load_encoder(build_model("swin_unetr", in_channels=1, out_channels=2, feature_size=12),
                          tmp_path / "model_swinvit.pt")
    assert not report.missing and report.unexpected == ["norm.weight", "rotation_head.weight"]


def test_a_different_feature_size_is_reported_not_loaded(trained_head):
    _, _, path = trained_head
    report = load_encoder(build_model("swin_unetr", in_channels=1, out_channels=2, feature_size=24), path)
    assert report.shape_mismatched and not report.loaded[:0]
    assert "shape-mismatched" in report.summary()


def test_more_input_channels_adapt_the_patch_embedding(trained_head):
    _, _, path = trained_head
    model = build_model("swin_unetr", in_channels=4, out_channels=4, feature_size=12)
    report = load_encoder(model, path)
    assert not report.missing and "adapted from 1 to 4 input channel" in report.summary()


class NotATensor:
    """Unpickling this would run arbitrary code; weights_only loading must refuse it."""


def test_a_file_with_code_objects_is_refused(tmp_path):
    torch.save({"state_dict": {}, "payload": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: not a loadable weight file"):
        load_encoder(build_model("swin_unetr", in_channels=1, out_channels=2, feature_size=12),
                     tmp_path / "evil.pt")


def test_bad_model_settings_are_named():
    with pytest.raises(ValueError, match="feature_size=10"):
        build_ssl_head(in_channels=1, feature_size=10, roi_size=ROI)
    with pytest.raises(ValueError, match=r"roi_size=\(64, 64, 48\)"):
        build_ssl_head(in_channels=1, feature_size=12, roi_size=(64, 64, 48))
    with pytest.raises(KeyError, match="unknown model 'unet3d'.*swin_unetr"):
        build_model("unet3d")
