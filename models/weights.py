"""Moving the pretrained encoder into Swin UNETR, with a report instead of a silent strict=False.

Two layouts load the same way: ours (``{"format": "swinray-encoder-v1", "state_dict": ...}`` with
``swinViT`` keys unprefixed) and MONAI's released SSL weights (``model_swinvit.pt``: keys under
``module.``, plus heads that Swin UNETR does not have, which are reported as unexpected).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

FORMAT = "swinray-encoder-v1"
ENCODER = "swinViT."
PATCH_EMBED = "patch_embed.proj.weight"


@dataclass(frozen=True)
class LoadReport:
    loaded: list[str]
    missing: list[str]              # encoder keys of the model that received no weight
    unexpected: list[str]           # keys in the file that match nothing in the encoder
    shape_mismatched: list[str]
    not_in_encoder: int             # decoder parameters, trained from scratch by design
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys):
            return f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""
        return (f"{len(self.loaded)} encoder tensors loaded, {len(self.missing)} missing{few(self.missing)}, "
                f"{len(self.unexpected)} unexpected{few(self.unexpected)}, "
                f"{len(self.shape_mismatched)} shape-mismatched{few(self.shape_mismatched)}; "
                f"{self.not_in_encoder} decoder tensors start from scratch"
                + "".join(f"; {n}" for n in self.notes))


def encoder_state_dict(ssl_head: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in ssl_head.swinViT.state_dict().items()}


def save_encoder(ssl_head: nn.Module, path: str | Path) -> None:
    embed = ssl_head.swinViT.patch_embed.proj.weight
    torch.save({"format": FORMAT, "state_dict": encoder_state_dict(ssl_head),
                "feature_size": int(embed.shape[0]), "in_channels": int(embed.shape[1])}, path)


def _encoder_keys(state: dict) -> dict[str, torch.Tensor]:
    """File keys -> keys relative to ``swinViT`` (ours are already, MONAI's carry ``module.``)."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", ENCODER):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def adapt_patch_embedding(weight: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, str]:
    """(out, in_old, p, p, p) -> (out, in_channels, ...): the mean filter repeated, rescaled by
    in_old / in_channels so the embedding of an image with equal channels keeps its magnitude."""
    old = weight.shape[1]
    adapted = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1, 1) * (old / in_channels)
    return adapted, (f"patch embedding adapted from {old} to {in_channels} input channel(s): "
                     f"mean filter over the {old} pretrained channel(s), repeated and scaled by {old}/{in_channels}")


def load_encoder(model: nn.Module, source, adapt_channels: bool = True) -> LoadReport:
    """Copy pretrained encoder weights into ``model.swinViT``; report exactly what happened."""
    if isinstance(source, (str, Path)):
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{source}: not a loadable weight file ({type(e).__name__}: {e})") from None
    state = _encoder_keys(source.get("state_dict", source) if isinstance(source, dict) else source)
    target = model.swinViT.state_dict()
    loaded, mismatched, notes, update = [], [], [], {}
    for key, value in state.items():
        if key not in target:
            continue
        if key == PATCH_EMBED and value.shape != target[key].shape and adapt_channels \
                and value.shape[0] == target[key].shape[0] and value.shape[2:] == target[key].shape[2:]:
            value, note = adapt_patch_embedding(value, target[key].shape[1])
            notes.append(note)
        if value.shape != target[key].shape:
            mismatched.append(f"{ENCODER}{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
            continue
        update[key] = value
        loaded.append(ENCODER + key)
    model.swinViT.load_state_dict({**target, **update})
    unexpected = sorted(k for k in state if k not in target)
    missing = sorted(ENCODER + k for k in target if k not in update and f"{ENCODER}{k}" not in
                     [m.split(" ")[0] for m in mismatched])
    decoder = sum(1 for k in model.state_dict() if not k.startswith(ENCODER))
    return LoadReport(sorted(loaded), missing, unexpected, mismatched, decoder, notes)
