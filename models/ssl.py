"""The SSL pretraining network of Tang et al. (CVPR 2022): a Swin encoder plus three small heads.

The encoder is MONAI's ``SwinTransformer`` built with exactly the arguments ``SwinUNETR`` uses for
its ``swinViT``, under the same attribute name, so ``SSLHead.swinViT.state_dict()`` loads one to
one into the ``SwinUNETR`` used for fine-tuning (see ``models/weights.py``).

    .venv/bin/python -m pytest tests/unit/test_ssl_model.py -q
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import MERGING_MODE, SwinTransformer
from monai.utils import ensure_tuple_rep, look_up_option
from torch import nn

NUM_ROTATIONS = 4           # 0, 90, 180 and 270 degrees
CONTRASTIVE_DIM = 512       # projection size of the paper's contrastive head
DOWNSAMPLING = 32           # patch embedding (2x) then four 2x patch mergings: 2 ** 5
# SwinUNETR's fixed encoder settings (MONAI 1.6.1 defaults; the paper's Swin UNETR-B at feature_size 48)
PATCH_SIZE = 2
WINDOW_SIZE = 7             # the paper's attention window; a setting (model.window_size)
DEPTHS = (2, 2, 2, 2)
NUM_HEADS = (3, 6, 12, 24)


def check_feature_size(feature_size: int) -> None:
    """Swin UNETR's heads split channels 3, 6, 12, 24 ways, so feature_size must divide by 12."""
    if feature_size <= 0 or feature_size % 12:
        raise ValueError(f"model.feature_size={feature_size}: must be a positive multiple of 12 "
                         f"(the attention heads split it 3, 6, 12 and 24 ways); e.g. 12, 24 or 48")


def check_roi_size(roi_size: Sequence[int], spatial_dims: int = 3) -> None:
    """Every side must divide by 32 (five 2x downsamplings); the deepest map needs > 1 voxel."""
    roi = tuple(roi_size)
    if len(roi) != spatial_dims or any(side <= 0 or side % DOWNSAMPLING for side in roi):
        raise ValueError(f"model.roi_size={roi}: expected {spatial_dims} sides, each a positive multiple "
                         f"of {DOWNSAMPLING} (patch embedding then four 2x patch mergings); e.g. (96, 96, 96)")
    if all(side == DOWNSAMPLING for side in roi):
        raise ValueError(f"model.roi_size={roi}: the deepest feature map would be a single voxel, which "
                         f"instance normalisation cannot normalise; make at least one side 64 or more")


def swin_encoder(in_channels: int, feature_size: int, drop_path_rate: float = 0.0,
                 use_checkpoint: bool = False, spatial_dims: int = 3,
                 window_size: int = WINDOW_SIZE) -> SwinTransformer:
    """MONAI's Swin transformer, argument for argument as ``SwinUNETR.__init__`` builds ``swinViT``."""
    return SwinTransformer(
        in_chans=in_channels,
        embed_dim=feature_size,
        window_size=ensure_tuple_rep(window_size, spatial_dims),
        patch_size=ensure_tuple_rep(PATCH_SIZE, spatial_dims),
        depths=DEPTHS,
        num_heads=NUM_HEADS,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=drop_path_rate,
        norm_layer=nn.LayerNorm,
        patch_norm=False,
        use_checkpoint=use_checkpoint,
        spatial_dims=spatial_dims,
        downsample=look_up_option("merging", MERGING_MODE),
        use_v2=False,
    )


def reconstruction_decoder(channels: int, out_channels: int, spatial_dims: int = 3) -> nn.Sequential:
    """(B, channels, *S/32) -> (B, out_channels, *S): five [conv 3, instance norm, LeakyReLU, 2x up].

    The reference "vae" decoder of the MONAI research code, kept light: every stage halves the
    channels (16F -> F/2 before the final 1x1 conv), so the full-resolution tensor is thin.
    """
    conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
    norm = (nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 2]
    mode = ("bilinear", "trilinear")[spatial_dims - 2]
    stages: list[nn.Module] = []
    for _ in range(5):                      # 2 ** 5 = 32 undoes the encoder's downsampling
        stages += [conv(channels, channels // 2, kernel_size=3, padding=1), norm(channels // 2),
                   nn.LeakyReLU(), nn.Upsample(scale_factor=2, mode=mode, align_corners=False)]
        channels //= 2
    return nn.Sequential(*stages, conv(channels, out_channels, kernel_size=1))


class SSLHead(nn.Module):
    """Swin encoder with the rotation, contrastive and reconstruction heads of Tang et al.

    (B, C, *S) -> rotation logits (B, 4), contrastive embedding (B, 512), reconstruction (B, C, *S).
    The two linear heads read the deepest stage (16 * feature_size channels at 1/32 scale); the
    decoder upsamples that map 32x back to the input grid. The rotation head reads the first token
    (the corner position), as the reference ``SSLHead`` does: a rotation turns the map, so one
    position sees another part of the crop, while the spatial mean (what the contrastive head reads,
    so that two views compare as wholes) barely changes.

    Args:
        in_channels: image channels C (1 for CT).
        feature_size: embedding width of the first stage; a multiple of 12 (48 = Swin UNETR-B).
        roi_size: the crop size this network will see; only checked (sides divisible by 32).
        drop_path_rate: stochastic depth of the encoder.
        use_checkpoint: gradient checkpointing in every Swin block (less memory, more compute).
        spatial_dims: 3 for volumes, 2 for images.
        window_size: Swin attention window (7 in the paper).
    """

    def __init__(self, in_channels: int, feature_size: int, roi_size: Sequence[int],
                 drop_path_rate: float = 0.0, use_checkpoint: bool = False, spatial_dims: int = 3,
                 window_size: int = WINDOW_SIZE):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims}: must be 2 or 3")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels}: must be at least 1")
        check_feature_size(feature_size)
        check_roi_size(roi_size, spatial_dims)
        self.swinViT = swin_encoder(in_channels, feature_size, drop_path_rate, use_checkpoint, spatial_dims,
                                    window_size)
        deepest = 16 * feature_size           # channels after four patch mergings
        self.rotation_head = nn.Linear(deepest, NUM_ROTATIONS)
        self.contrastive_head = nn.Linear(deepest, CONTRASTIVE_DIM)
        self.decoder = reconstruction_decoder(deepest, in_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if any(side % DOWNSAMPLING for side in x.shape[2:]):
            raise ValueError(f"SSLHead input {tuple(x.shape)}: every spatial side must be divisible by "
                             f"{DOWNSAMPLING}; crop to model.roi_size first")
        deepest = self.swinViT(x.contiguous())[-1]     # (B, 16 * feature_size, *S/32), layer-normed
        tokens = deepest.flatten(2)                                 # (B, 16 * feature_size, N)
        return (self.rotation_head(tokens[:, :, 0]), self.contrastive_head(tokens.mean(dim=2)),
                self.decoder(deepest))
