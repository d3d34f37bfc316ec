"""Which encoder parameters `seg.freeze_encoder_stages` freezes: the patch embedding, then Swin stages in order."""
import pytest

from swinray.models.registry import build_swin_unetr, encoder_stage_parameters


@pytest.fixture(scope="module")
def net():
    return build_swin_unetr(in_channels=1, out_channels=3, feature_size=12, window_size=4)


def ids(params):
    return {id(p) for p in params}


def test_stages_freeze_the_patch_embedding_first_then_swin_stages_in_order(net):
    assert encoder_stage_parameters(net, 0) == []
    assert ids(encoder_stage_parameters(net, 1)) == ids(net.swinViT.patch_embed.parameters())
    two = ids(encoder_stage_parameters(net, 2))
    assert two == ids(net.swinViT.patch_embed.parameters()) | ids(net.swinViT.layers1.parameters())
    assert ids(encoder_stage_parameters(net, 5)) == ids(net.swinViT.parameters())   # the whole encoder
    assert not ids(encoder_stage_parameters(net, 5)) & ids(net.decoder1.parameters())


def test_more_stages_than_the_encoder_has_is_an_error_naming_the_setting(net):
    with pytest.raises(ValueError, match="seg.freeze_encoder_stages=6"):
        encoder_stage_parameters(net, 6)
