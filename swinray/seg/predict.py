"""Segment NIfTI files with a fine-tuned model; each label map keeps its input's grid and header.

The input is verified and preprocessed as in training, segmented by sliding windows, and the
prediction is resampled back onto the input's voxel grid, so the written label map has the
input's shape, spacing and affine (qform and sform codes included).

    python -m platform.predict --checkpoint outputs/finetune/model.pt --input scans/ --output labels/
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from swinray.config import PredictConfig
from swinray.data.datasets import NIFTI_SUFFIXES, Case, DatasetError, _case_id
from swinray.data.nifti import CaseError
from swinray.data.tasks import task_from_dict
from swinray.progress import Progress
from swinray.seg.evaluate import open_model, pick_device
from swinray.seg.model_input import segment_case


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        if files:
            return files
        raise DatasetError(f"{path}: no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) in this folder")
    raise DatasetError(f"{path}: no such file or folder")


def write_label_map(labels: np.ndarray, source: Path, out_path: Path) -> None:
    """Save ``labels`` with the source's affine and header (qform/sform codes kept), as uint8."""
    header = nib.load(source).header.copy()
    image = nib.Nifti1Image(labels.astype(np.uint8), None, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    image.header.set_data_shape(labels.shape)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, out_path)


def run_predict(cfg: PredictConfig, log=print) -> dict:
    if not cfg.checkpoint or not cfg.input:
        raise DatasetError("predict needs --checkpoint FILE (model.pt from finetune) and --input PATH")
    files = input_files(Path(cfg.input))
    if Path(cfg.output).resolve() in {f.parent.resolve() for f in files}:
        raise DatasetError(f"--output {cfg.output} is the input folder: the label maps would overwrite "
                           f"the images (same file names); choose another folder")
    device = pick_device(cfg.device)
    model, meta = open_model(cfg.checkpoint, device)
    task = task_from_dict(meta["task"])
    out_dir = Path(cfg.output)
    log(f"segmenting {len(files)} file(s) with {cfg.checkpoint} (task {task.name}) -> {out_dir}")
    written, rejected = [], []
    progress = Progress(len(files), "file", "predict")
    for path in files:
        case = Case(_case_id(str(path)), (str(path.resolve()),), None, "test")
        try:
            labels = segment_case(model, case, task, meta["roi_size"], cfg.sw_batch_size, cfg.sw_overlap,
                                  device).labels
            out_path = out_dir / path.name
            write_label_map(labels, path, out_path)
            written.append(str(out_path))
        except CaseError as e:
            log(f"rejected: {e}")
            rejected.append({"file": str(path), "reason": str(e)})
        progress.update()
    progress.close()
    return {"command": "predict", "checkpoint": cfg.checkpoint, "num_written": len(written),
            "num_rejected": len(rejected), "written": written, "rejected": rejected, "output": str(out_dir),
            "ok": bool(written)}
