"""Moving the pretrained Swin encoder into Swin UNETR, with a report instead of a silent strict=False.

Two file layouts load the same way:

- ours, written by ``save_encoder``: ``{"format": "swinray-encoder-v1", "state_dict": {...},
  "feature_size": F, "in_channels": C}`` with keys exactly as in ``SwinUNETR.swinViT``;
- MONAI's released SSL weights (``model_swinvit.pt`` of the research-contributions repository):
  ``{"state_dict": {...}}`` with keys under ``module.``, MLP layers named ``mlp.fc1``/``mlp.fc2``
  (MONAI's MLPBlock calls them ``linear1``/``linear2``) and extra tensors Swin UNETR has no place
  for (a final ``norm``, the pretraining heads), which are reported as unexpected.

Files are read with ``torch.load(..., weights_only=True)``: a file that holds anything but tensors
and plain containers is refused rather than unpickled.

    from swinray.models.weights import load_encoder
    print(load_encoder(swin_unetr, "outputs/pretrain/encoder.pt").summary())
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

FORMAT = "swinray-encoder-v1"
ENCODER = "swinViT."                      # the encoder's attribute in SwinUNETR and SSLHead
PATCH_EMBED = "patch_embed.proj.weight"   # (embed_dim, in_channels, p, p, p)
BIAS_TABLE = "relative_position_bias_table"  # ((2w - 1)^3, heads): a bias per relative offset in a window w
BIAS_INDEX = "relative_position_index"       # (w^3, w^3) buffer, a function of w alone
# Key prefixes other writers put in front of encoder keys: DistributedDataParallel's wrapper,
# whole SSLHead / SwinUNETR checkpoints, and the research code's snake_case attribute name.
_FILE_PREFIXES = ("module.", "swinViT.", "swin_vit.")
_RENAMES = (
    (re.compile(r"\.mlp\.fc([12])\."), r".mlp.linear\1."),   # timm-style MLP names -> MONAI MLPBlock
    (re.compile(r"^(layers[1-4])\.(?!\d)"), r"\1.0."),       # stages saved without their ".0" index
)


@dataclass(frozen=True)
class LoadReport:
    """What ``load_encoder`` did. Model keys carry the ``swinViT.`` prefix; file keys are verbatim."""

    loaded: list[str]            # encoder keys of the model that received a tensor
    missing: list[str]           # encoder keys of the model that received none (shape mismatches included)
    unexpected: list[str]        # keys in the file that matched no encoder key
    shape_mismatched: list[str]  # encoder keys whose tensor in the file had another shape (not loaded)
    not_in_encoder: int          # the model's other tensors (Swin UNETR's decoder): untrained by design
    notes: list[str]             # adaptations made, first shape mismatch with its shapes

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters of ``model`` that received a pretrained tensor (loaded buffers are no parameters)."""
        named = dict(model.named_parameters())
        return [named[key] for key in self.loaded if key in named]

    def summary(self) -> str:
        """One line: counts, the first few names of each problem, then the notes."""
        def few(keys: list[str]) -> str:
            return f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""
        return (f"{len(self.loaded)} encoder tensors loaded, {len(self.missing)} missing{few(self.missing)}, "
                f"{len(self.unexpected)} unexpected{few(self.unexpected)}, "
                f"{len(self.shape_mismatched)} shape-mismatched{few(self.shape_mismatched)}; "
                f"{self.not_in_encoder} tensors outside the encoder start untrained"
                + "".join(f"; {note}" for note in self.notes))


def _encoder_of(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "swinViT", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"expected a model with a .swinViT encoder (SwinUNETR or SSLHead), got "
                        f"{type(model).__name__}; unwrap DistributedDataParallel with .module first")
    return encoder


def encoder_state_dict(ssl_head: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors on the CPU (copies), keyed as in ``SwinUNETR(...).swinViT``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in _encoder_of(ssl_head).state_dict().items()}


def save_encoder(ssl_head: nn.Module, path: str | Path) -> Path:
    """Write the encoder in the ``swinray-encoder-v1`` format; return the path."""
    encoder = _encoder_of(ssl_head)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "state_dict": encoder_state_dict(ssl_head),
                "feature_size": int(encoder.embed_dim),
                "in_channels": int(encoder.patch_embed.proj.in_channels)}, path)
    return path


def _read_state(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """The file's (or mapping's) tensors under their original keys."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
    if isinstance(source, (str, os.PathLike)):
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{name}: refused by torch.load(weights_only=True); a weight file may hold "
                             f"only tensors and plain containers (anything else would run code when "
                             f"unpickled) and must not be truncated. Reason: {reason}") from e
    if not isinstance(source, Mapping):
        raise ValueError(f"{name}: expected a dict with a 'state_dict' of tensors, got {type(source).__name__}")
    if "format" in source and source["format"] != FORMAT:
        raise ValueError(f"{name}: format={source['format']!r} is not supported; expected {FORMAT!r} "
                         f"or MONAI's released layout (no 'format' key)")
    state = source.get("state_dict", source)
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"{name}: expected 'state_dict' to map names to tensors; not tensors: "
                         f"{', '.join(map(str, odd[:5]))} (top-level keys: {', '.join(map(str, source))})")
    return dict(state)


def _encoder_key(file_key: str) -> str:
    """A file's key -> the key it would have in ``SwinUNETR.swinViT`` (it may match nothing)."""
    key = file_key
    for prefix in _FILE_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def adapt_patch_embedding(state: Mapping[str, torch.Tensor], in_channels: int) -> tuple[dict[str, torch.Tensor], str]:
    """Give ``patch_embed.proj.weight`` (out, in_old, p, p, p) ``in_channels`` input channels.

    Every new channel gets the mean of the pretrained filters, scaled by in_old / in_channels, so
    an image whose channels are all equal embeds exactly as the pretrained network embedded it
    (e.g. 1-channel CT weights for 4-channel BraTS MRI). Returns a new dict and a note saying so.
    """
    if PATCH_EMBED not in state:
        raise KeyError(f"{PATCH_EMBED!r} is not in the state dict; keys start with: {', '.join(list(state)[:3])}")
    weight = state[PATCH_EMBED]
    old = weight.shape[1]
    if old == in_channels:
        return dict(state), f"{PATCH_EMBED} already has {old} input channel(s); unchanged"
    mean = weight.float().mean(dim=1, keepdim=True)
    adapted = (mean.repeat(1, in_channels, *[1] * (weight.ndim - 2)) * (old / in_channels)).to(weight.dtype)
    note = (f"{PATCH_EMBED} adapted from {old} to {in_channels} input channel(s): the mean of the "
            f"{old} pretrained filter(s), repeated and scaled by {old}/{in_channels} so activations keep "
            f"their magnitude")
    return {**state, PATCH_EMBED: adapted}, note


def crop_bias_table(table: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A window-w bias table cut to a smaller window v (``shape`` = ((2v - 1)^3, heads)), else None.

    Row i of the table is the relative offset (dz, dy, dx) in C order, each in -(w - 1)..(w - 1);
    a window v < w uses the central -(v - 1)..(v - 1) of each, so the crop carries exactly the
    pretrained biases of every offset the smaller window has (e.g. MONAI's window-7 weights into a
    window-4 model).
    """
    side_file, side_model = (round(n ** (1 / 3)) for n in (table.shape[0], shape[0]))
    if (side_file ** 3 != table.shape[0] or side_model ** 3 != shape[0] or side_model >= side_file
            or table.shape[1:] != shape[1:]):
        return None
    lo = (side_file - side_model) // 2
    cube = table.reshape(side_file, side_file, side_file, -1)[lo:lo + side_model, lo:lo + side_model,
                                                            lo:lo + side_model]
    return cube.reshape(shape)


def _adapt_window(mapped: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str | None:
    """Crop bias tables of a larger attention window in place; the index buffers follow the model."""
    cropped = 0
    for key in [k for k in mapped if k.endswith(BIAS_TABLE) and mapped[k].shape != target[k].shape]:
        table = crop_bias_table(mapped[key], target[key].shape)
        if table is None:
            return None
        mapped[key], cropped = table, cropped + 1
    if not cropped:
        return None
    for key in [k for k in mapped if k.endswith(BIAS_INDEX) and mapped[k].shape != target[k].shape]:
        mapped[key] = target[key]
    return (f"{cropped} relative-position bias tables cropped to the model's smaller attention window "
            f"(same relative offsets); their index buffers are the model's own")


def load_encoder(model: nn.Module, path_or_state: str | os.PathLike | Mapping,
                 adapt_channels: bool = False) -> LoadReport:
    """Copy pretrained encoder weights into ``model.swinViT`` and report exactly what happened.

    Only encoder keys count as missing; the rest of ``model`` (Swin UNETR's decoder) is counted in
    ``not_in_encoder``. Weights of a larger attention window are cropped to the model's window
    (``crop_bias_table``); other tensors whose shape differs are not loaded. With ``adapt_channels`` a patch
    embedding for another number of input channels is adapted (``adapt_patch_embedding``) instead.
    """
    encoder = _encoder_of(model)
    target = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for file_key, value in _read_state(path_or_state).items():
        key = _encoder_key(file_key)
        if key in target and key not in mapped:
            mapped[key] = value
        else:
            unexpected.append(file_key)
    notes = [note] if (note := _adapt_window(mapped, target)) else []
    if adapt_channels and PATCH_EMBED in mapped and mapped[PATCH_EMBED].shape[1] != target[PATCH_EMBED].shape[1]:
        mapped, note = adapt_patch_embedding(mapped, target[PATCH_EMBED].shape[1])
        notes.append(note)
    mismatched = sorted(k for k, v in mapped.items() if v.shape != target[k].shape)
    if mismatched:
        first = mismatched[0]
        notes.append(f"first shape mismatch: {ENCODER}{first} is {tuple(mapped[first].shape)} in the file, "
                     f"{tuple(target[first].shape)} in the model")
    update = {k: v for k, v in mapped.items() if k not in mismatched}
    encoder.load_state_dict({**target, **update}, strict=True)
    return LoadReport(
        loaded=sorted(ENCODER + k for k in update),
        missing=sorted(ENCODER + k for k in target if k not in update),
        unexpected=sorted(unexpected),
        shape_mismatched=[ENCODER + k for k in mismatched],
        not_in_encoder=sum(1 for k in model.state_dict() if not k.startswith(ENCODER)),
        notes=notes,
    )
