"""The SSL network, the registry and weight transfer: one training step reaches every part, and
the encoder moves into Swin UNETR intact, from our files and from MONAI's released layout."""
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from swinray.models.registry import build_ssl_head, build_swin_unetr
from swinray.models.ssl import SSLHead
from swinray.models.weights import FORMAT, adapt_patch_embedding, encoder_state_dict, load_encoder, save_encoder
from swinray.pretext.losses import ssl_loss
from swinray.pretext.views import make_ssl_batch

# The smallest crop Swin UNETR accepts: sides divisible by 32 and a deepest (1/32) map of more
# than one voxel for instance norm. 64^3 costs ~3x more in window attention on a CPU.
ROI = (32, 32, 64)
FEATURES = 12


@pytest.fixture(scope="module")
def stepped_head():
    """An SSLHead after one forward/backward of the full objective on 2 crops (4 views)."""
    torch.manual_seed(0)
    head = build_ssl_head(in_channels=1, feature_size=FEATURES, roi_size=ROI)
    batch = make_ssl_batch(torch.rand(2, 1, *ROI), 0.3, torch.Generator().manual_seed(0))
    outputs = head(torch.cat([batch["view1"], batch["view2"]]))
    halves = [t.chunk(2) for t in outputs]
    loss, _ = ssl_loss(tuple(h[0] for h in halves), tuple(h[1] for h in halves), batch, (1, 1, 1), 0.5)
    loss.backward()
    return head, outputs


def swin_unetr(in_channels: int = 1) -> SwinUNETR:
    return build_swin_unetr(in_channels=in_channels, out_channels=14, feature_size=FEATURES)


def test_outputs_are_rotation_logits_an_embedding_and_a_full_size_reconstruction(stepped_head):
    _, (rotation, embedding, reconstruction) = stepped_head
    assert rotation.shape == (4, 4) and embedding.shape == (4, 512)
    assert reconstruction.shape == (4, 1, *ROI)


def test_one_backward_reaches_every_head_and_the_encoder(stepped_head):
    head, _ = stepped_head
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in (head.rotation_head, head.contrastive_head, head.decoder, head.swinViT.patch_embed):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0


def test_the_encoder_has_swin_unetrs_keys_and_shapes_one_to_one():
    ours = SSLHead(in_channels=1, feature_size=FEATURES, roi_size=ROI).swinViT.state_dict()
    theirs = SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURES).swinViT.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_a_2d_head_maps_images_to_the_same_three_outputs():
    rotation, embedding, reconstruction = SSLHead(1, FEATURES, (64, 64), spatial_dims=2)(torch.rand(2, 1, 64, 64))
    assert rotation.shape == (2, 4) and embedding.shape == (2, 512) and reconstruction.shape == (2, 1, 64, 64)


def test_an_exported_encoder_loads_into_a_fresh_swin_unetr_with_nothing_missing(stepped_head, tmp_path):
    head, _ = stepped_head
    saved = torch.load(save_encoder(head, tmp_path / "encoder.pt"), weights_only=True)
    assert saved["format"] == FORMAT and saved["feature_size"] == FEATURES and saved["in_channels"] == 1
    model = swin_unetr()
    report = load_encoder(model, tmp_path / "encoder.pt")
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatched == []
    assert len(report.loaded) == len(model.swinViT.state_dict())
    assert report.not_in_encoder > 0                       # the decoder starts untrained, not "missing"
    for key, value in head.swinViT.state_dict().items():
        assert torch.equal(model.swinViT.state_dict()[key], value), key


@pytest.mark.parametrize("stage_names", ["layers1.0", "layers1"])
def test_monais_released_layout_loads_and_its_extra_heads_are_reported_unexpected(stepped_head, tmp_path,
                                                                                   stage_names):
    """model_swinvit.pt: keys under ``module.``, MLPs named fc1/fc2, plus norm and pretraining heads."""
    head, _ = stepped_head
    state = {}
    for key, value in encoder_state_dict(head).items():
        key = key.replace("mlp.linear1.", "mlp.fc1.").replace("mlp.linear2.", "mlp.fc2.")
        for stage in range(1, 5):
            key = key.replace(f"layers{stage}.0.", stage_names.replace("1", str(stage)) + ".")
        state[f"module.{key}"] = value
    extras = {"module.norm.weight": torch.ones(16 * FEATURES),
              "module.rotation_head.weight": torch.zeros(4, 16 * FEATURES),
              "module.contrastive_head.weight": torch.zeros(512, 16 * FEATURES)}
    torch.save({"state_dict": {**state, **extras}}, tmp_path / "model_swinvit.pt")
    model = swin_unetr()
    report = load_encoder(model, tmp_path / "model_swinvit.pt")
    assert report.missing == [] and report.shape_mismatched == []
    assert report.unexpected == sorted(extras)
    for key, value in head.swinViT.state_dict().items():
        assert torch.equal(model.swinViT.state_dict()[key], value), key


def test_a_tensor_of_another_shape_is_reported_and_not_loaded(stepped_head):
    head, _ = stepped_head
    state = encoder_state_dict(head)
    state["layers1.0.blocks.0.attn.qkv.weight"] = torch.zeros(3 * FEATURES, FEATURES + 1)
    model = swin_unetr()
    before = model.swinViT.layers1[0].blocks[0].attn.qkv.weight.detach().clone()
    report = load_encoder(model, {"state_dict": state})
    assert report.shape_mismatched == ["swinViT.layers1.0.blocks.0.attn.qkv.weight"]
    assert report.missing == report.shape_mismatched            # it received no weight
    assert torch.equal(model.swinViT.layers1[0].blocks[0].attn.qkv.weight, before)
    assert "1 shape-mismatched" in report.summary() and "(36, 13) in the file" in report.summary()


def test_a_four_channel_target_gets_an_adapted_patch_embedding_only_when_asked(stepped_head):
    head, _ = stepped_head
    state = {"state_dict": encoder_state_dict(head)}
    plain = load_encoder(swin_unetr(in_channels=4), state)
    assert plain.shape_mismatched == ["swinViT.patch_embed.proj.weight"]

    model = swin_unetr(in_channels=4)
    report = load_encoder(model, state, adapt_channels=True)
    assert report.missing == [] and report.shape_mismatched == []
    assert "adapted from 1 to 4 input channel" in report.summary()
    pretrained = head.swinViT.patch_embed.proj.weight                      # (12, 1, 2, 2, 2)
    assert torch.allclose(model.swinViT.patch_embed.proj.weight, pretrained.repeat(1, 4, 1, 1, 1) / 4)


def test_an_adapted_patch_embedding_embeds_an_image_with_equal_channels_as_before():
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(12, 2, 2, 2, 2, generator=g)                      # 2 pretrained channels
    (adapted, note), = [adapt_patch_embedding({"patch_embed.proj.weight": weight}, 5)]
    image = torch.rand(1, 1, 8, 8, 8, generator=g)
    before = F.conv3d(image.repeat(1, 2, 1, 1, 1), weight, stride=2)
    after = F.conv3d(image.repeat(1, 5, 1, 1, 1), adapted["patch_embed.proj.weight"], stride=2)
    assert torch.allclose(before, after, atol=1e-5) and "scaled by 2/5" in note


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt: refused by torch.load\(weights_only=True\)"):
        load_encoder(swin_unetr(), tmp_path / "evil.pt")
    assert not marker.exists()


def test_bad_model_settings_name_the_field_and_value():
    with pytest.raises(ValueError, match="model.feature_size=10: must be a positive multiple of 12"):
        build_ssl_head(in_channels=1, feature_size=10, roi_size=ROI)
    with pytest.raises(ValueError, match=r"model.roi_size=\(64, 64, 48\): .*multiple of 32"):
        build_ssl_head(in_channels=1, feature_size=FEATURES, roi_size=(64, 64, 48))
    with pytest.raises(ValueError, match=r"model.roi_size=\(32, 32, 32\): .*single voxel"):
        build_ssl_head(in_channels=1, feature_size=FEATURES, roi_size=(32, 32, 32))
    with pytest.raises(ValueError, match="model.feature_size=18"):
        build_swin_unetr(in_channels=1, out_channels=2, feature_size=18)


def test_window_7_weights_load_into_a_window_4_model_with_the_same_relative_offsets():
    torch.manual_seed(0)
    big = build_ssl_head(in_channels=1, feature_size=FEATURES, roi_size=ROI, window_size=7)
    small = build_swin_unetr(in_channels=1, out_channels=3, feature_size=FEATURES, window_size=4)
    report = load_encoder(small, encoder_state_dict(big))
    assert report.missing == [] and report.shape_mismatched == [] and report.unexpected == []
    assert "8 relative-position bias tables cropped" in report.summary()
    key = "layers1.0.blocks.0.attn.relative_position_bias_table"
    table7 = encoder_state_dict(big)[key].reshape(13, 13, 13, -1)
    table4 = small.swinViT.state_dict()[key].reshape(7, 7, 7, -1)
    assert torch.equal(table4[3, 3, 3], table7[6, 6, 6])           # offset (0, 0, 0)
    assert torch.equal(table4[0, 6, 2], table7[3, 9, 5])           # offset (-3, +3, -1)
    index = small.swinViT.state_dict()[key.replace("bias_table", "index")]
    assert index.shape == (64, 64) and int(index.max()) == 7 ** 3 - 1
