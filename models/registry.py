"""Model builders: MONAI's Swin UNETR for segmentation, and the pretraining network, from settings.

    from swinray.models.registry import build_swin_unetr
    net = build_swin_unetr(in_channels=1, out_channels=14, feature_size=48)
"""
from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import SwinUNETR
from torch import nn

from .ssl import WINDOW_SIZE, SSLHead, check_feature_size


def build_swin_unetr(in_channels: int, out_channels: int, feature_size: int,
                     drop_path_rate: float = 0.0, use_checkpoint: bool = False,
                     window_size: int = WINDOW_SIZE, use_flash_attention: bool = True) -> SwinUNETR:
    """MONAI's Swin UNETR for (B, in_channels, *S) -> (B, out_channels, *S), S divisible by 32.

    feature_size 48 is the paper's Swin UNETR-B. MONAI 1.6.1 no longer takes ``img_size`` (the
    input size is checked in ``forward``) and names stochastic depth ``dropout_path_rate``.
    """
    check_feature_size(feature_size)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     dropout_path_rate=drop_path_rate, use_checkpoint=use_checkpoint, spatial_dims=3,
                     window_size=window_size, use_flash_attention=use_flash_attention)


def build_ssl_head(in_channels: int, feature_size: int, roi_size: Sequence[int],
                   drop_path_rate: float = 0.0, use_checkpoint: bool = False,
                   window_size: int = WINDOW_SIZE) -> SSLHead:
    """The pretraining network (encoder + rotation, contrastive and reconstruction heads)."""
    return SSLHead(in_channels=in_channels, feature_size=feature_size, roi_size=roi_size,
                   drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint, window_size=window_size)


ENCODER_STAGES = ("patch_embed", "layers1", "layers2", "layers3", "layers4")


def encoder_stage_parameters(model: SwinUNETR, stages: int) -> list[nn.Parameter]:
    """Parameters of the patch embedding and the first ``stages - 1`` Swin stages (0 = none, 5 = all)."""
    if not 0 <= stages <= len(ENCODER_STAGES):
        raise ValueError(f"seg.freeze_encoder_stages={stages}: must be 0 (none) to {len(ENCODER_STAGES)} "
                         f"({', '.join(ENCODER_STAGES)})")
    return [p for name in ENCODER_STAGES[:stages] for p in getattr(model.swinViT, name).parameters()]
