"""The SSL pretraining network of Tang et al. (CVPR 2022): Swin encoder plus three small heads.

The encoder is taken from a MONAI ``SwinUNETR`` built with the same arguments, so its weights
(``swinViT.*``) load one to one into the ``SwinUNETR`` used for fine-tuning.
"""
from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

NUM_ROTATIONS = 4           # 0, 90, 180, 270 degrees
CONTRASTIVE_DIM = 512       # projection size used by the paper's contrastive head
DOWNSAMPLING = 32           # patch embedding (2x) then four 2x patch mergings


class SSLHead(nn.Module):
    """(B, C, X, Y, Z) -> rotation logits (B, 4), embedding (B, 512), reconstruction (B, C, X, Y, Z)."""

    def __init__(self, in_channels: int, feature_size: int, roi_size, drop_path_rate: float = 0.0,
                 use_checkpoint: bool = False):
        super().__init__()
        if feature_size % 12:
            raise ValueError(f"model.feature_size={feature_size}: must be divisible by 12")
        if any(side % DOWNSAMPLING for side in roi_size):
            raise ValueError(f"model.roi_size={tuple(roi_size)}: every side must be divisible by 32")
        self.swinViT = SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=feature_size,
                                 dropout_path_rate=drop_path_rate, use_checkpoint=use_checkpoint).swinViT
        dim = 16 * feature_size     # channels of the deepest stage
        self.rotation_head = nn.Linear(dim, NUM_ROTATIONS)
        self.contrastive_head = nn.Linear(dim, CONTRASTIVE_DIM)
        stages, channels = [], dim
        for _ in range(5):          # five 2x upsamplings undo the 32x downsampling
            stages += [nn.Conv3d(channels, channels // 2, 3, padding=1), nn.InstanceNorm3d(channels // 2),
                       nn.LeakyReLU(), nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
            channels //= 2
        self.decoder = nn.Sequential(*stages, nn.Conv3d(channels, in_channels, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        deepest = self.swinViT(x.contiguous())[4]          # (B, 16 * feature_size, X/32, Y/32, Z/32)
        pooled = deepest.mean(dim=(2, 3, 4))
        return self.rotation_head(pooled), self.contrastive_head(pooled), self.decoder(deepest)
