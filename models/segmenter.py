"""The fine-tuned segmentation model as one self-contained file: weights plus what is needed to use it.

``{"format": "swinray-segmenter-v1", "state_dict": {...}, "model": {...build_swin_unetr kwargs},
"roi_size": [...], "task": {...TaskSpec fields}, "metrics": {...}, "flip_axes": [...],
"largest_component_classes": [...]}``. Evaluation and prediction
rebuild the network and the preprocessing from the file alone, so a checkpoint can be scored on a
dataset it never saw. Read with ``torch.load(..., weights_only=True)``: only tensors and plain
containers, never pickled objects.

    from swinray.models.segmenter import load_segmenter
    model, meta = load_segmenter("outputs/finetune/model.pt")
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .registry import build_swin_unetr

FORMAT = "swinray-segmenter-v1"


def save_segmenter(model: nn.Module, path: str | Path, model_kwargs: dict[str, Any], roi_size,
                   task: dict[str, Any], metrics: dict[str, Any] | None = None, flip_axes=(0,),
                   largest_component_classes=()) -> Path:
    """Write ``model`` (a SwinUNETR built with ``model_kwargs``) with its task, ROI, the axes its
    training flipped (what test-time flips may mirror) and the classes its validation chose to
    post-process (``swinray.seg.postprocess``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "state_dict": state, "model": dict(model_kwargs),
                "roi_size": [int(s) for s in roi_size], "task": task, "metrics": metrics or {},
                "flip_axes": [int(a) for a in flip_axes],
                "largest_component_classes": [int(c) for c in largest_component_classes]}, path)
    return path


def load_segmenter(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(SwinUNETR with the file's weights, in eval mode; the file's metadata without the weights)."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the model file ({e.strerror or e}); finetune writes "
                                f"<storage>/<name>/model.pt") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable model file with torch.load(weights_only=True) "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: format {found!r} is not a fine-tuned model ({FORMAT!r}); an SSL "
                         f"encoder goes to finetune --pretrained, not to evaluate or predict")
    classes, num_classes = data.get("largest_component_classes", []), len(data["task"]["label_names"])
    if any(not 1 <= int(c) < num_classes for c in classes):
        raise ValueError(f"{path}: largest_component_classes {list(classes)} are not foreground classes of its "
                         f"task ({num_classes} classes with background): the file is damaged")
    model = build_swin_unetr(**data["model"])
    model.load_state_dict(data["state_dict"], strict=True)
    model.eval()
    return model, {k: v for k, v in data.items() if k != "state_dict"}
