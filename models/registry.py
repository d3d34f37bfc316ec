"""Model registry: a plain dict from name to builder; an unknown name lists the valid ones."""
from __future__ import annotations

from typing import Callable

from monai.networks.nets import SwinUNETR
from torch import nn

from models.ssl import SSLHead


def build_swin_unetr(in_channels: int, out_channels: int, feature_size: int,
                     drop_path_rate: float = 0.0, use_checkpoint: bool = False) -> SwinUNETR:
    """MONAI's Swin UNETR; feature_size 48 is the paper's Swin UNETR-B."""
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     dropout_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)


MODELS: dict[str, Callable[..., nn.Module]] = {"swin_unetr": build_swin_unetr}


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def build_ssl_head(in_channels: int, feature_size: int, roi_size, drop_path_rate: float = 0.0,
                   use_checkpoint: bool = False) -> SSLHead:
    return SSLHead(in_channels, feature_size, roi_size, drop_path_rate, use_checkpoint)
