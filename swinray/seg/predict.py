"""Segment NIfTI files with a fine-tuned model; each label map keeps its input's grid and header.

The input is verified and preprocessed as in training, segmented by sliding windows, and the
prediction is resampled back onto the input's voxel grid, so the written label map has the
input's shape, spacing and affine (qform and sform codes included). A file that fails for any
reason is a row of ``predictions.csv`` with its reason; the others go on. An output folder that
cannot be written (no permission, a full disk) stops the command, named: it is no file's fault.

    python -m platform.predict --checkpoint outputs/finetune/model.pt --input scans/ --output labels/
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from swinray.config import PredictConfig
from swinray.data.admission import admit
from swinray.data.cases import NIFTI_SUFFIXES, Case, case_id_of, real_path
from swinray.data.nifti import CaseError
from swinray.data.tasks import task_from_dict
from swinray.errors import DatasetError, StorageError
from swinray.progress import Progress
from swinray.seg.evaluate import case_failure, open_model, pick_device
from swinray.seg.inference import Mirrors
from swinray.seg.model_input import segment_case
from swinray.seg.postprocess import chosen_classes, describe
from swinray.storage import write_text
from swinray.writable import writing_to

CSV_FILE = "predictions.csv"
OUTPUT_KEY = "output"                  # named when the output folder cannot be written


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        if files:
            return files
        raise DatasetError(f"{path}: no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) in this folder")
    raise DatasetError(f"{path}: no such file or folder")


def output_dir(cfg: PredictConfig) -> Path:
    """The output folder, checked before anything is written to it (the command's config.json
    included): never the folder of an input, whose images the label maps would replace."""
    if Path(cfg.output).exists() and not Path(cfg.output).is_dir():
        raise DatasetError(f"--output {cfg.output} is a file; give a folder for the label maps")
    if cfg.input:
        out = Path(cfg.output).resolve()
        files = input_files(Path(cfg.input))
        if out in {f.parent.resolve() for f in files} | {Path(real_path(f)).parent for f in files}:   # links too
            raise DatasetError(f"--output {cfg.output} is the input folder: the label maps would overwrite "
                               f"the images (same file names); choose another folder")
    return Path(cfg.output)


def write_label_map(labels: np.ndarray, source: Path, out_path: Path) -> None:
    """Save ``labels`` with the source's affine and header (qform/sform codes kept), as uint8. The
    file is written under a temporary name and renamed over ``out_path``: a symlink already there is
    replaced, never written through."""
    header = nib.load(source).header.copy()
    image = nib.Nifti1Image(labels.astype(np.uint8), None, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    image.header.set_data_shape(labels.shape)
    tmp = out_path.with_name(f".{os.getpid()}.tmp.{out_path.name}")   # same suffix: nibabel gzips .nii.gz
    with writing_to(out_path.parent, OUTPUT_KEY):      # a refused or full folder: StorageError, not this file's
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            nib.save(image, tmp)
            os.replace(tmp, out_path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def write_table(rows: list[dict], path: Path) -> Path:
    """One row per input: file, status (written or rejected), output, reason."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["file", "status", "output", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, table.getvalue())


def run_predict(cfg: PredictConfig, log=print) -> dict:
    if not cfg.checkpoint or not cfg.input:
        raise DatasetError("predict needs --checkpoint FILE (model.pt from finetune) and --input PATH")
    files = input_files(Path(cfg.input))
    out_dir = output_dir(cfg)
    device = pick_device(cfg.device)
    model, meta = open_model(cfg.checkpoint, device)
    task = task_from_dict(meta["task"])
    mirrors = Mirrors.of_model(meta, cfg.tta_flips)
    post = chosen_classes(meta, cfg.largest_component)
    log(f"segmenting {len(files)} file(s) with {cfg.checkpoint} (task {task.name}), {mirrors.describe()}, "
        f"{describe(post, task.label_names, meta)} -> {out_dir}")
    written, rejected, table = [], [], []
    cases = [Case(case_id_of(str(path)), (real_path(path),), None, "test") for path in files]
    refused = dict(admit(cases, task.spacing_mm, cfg.limits).refused)
    progress = Progress(len(files), "file", "predict")
    for path, case in zip(files, cases):
        try:
            if case in refused:             # far above the median input: refused from its header
                raise CaseError(refused[case])
            labels = segment_case(model, case, task, meta["roi_size"], cfg.sw_batch_size, cfg.sw_overlap,
                                  device, cfg.limits, mirrors, post).labels
            out_path = out_dir / path.name
            write_label_map(labels, path, out_path)
            written.append(str(out_path))
            table.append({"file": str(path), "status": "written", "output": str(out_path), "reason": ""})
        except StorageError:    # the output folder's fault, not this file's: every other file would fail too
            raise
        except Exception as e:  # one failing file never stops the others
            log(f"rejected: {case_failure(case, e)}")
            rejected.append({"file": str(path), "reason": case_failure(case, e)})
            table.append({"file": str(path), "status": "rejected", "output": "", "reason": case_failure(case, e)})
        progress.update()
    progress.close()
    with writing_to(out_dir, OUTPUT_KEY):
        csv_path = write_table(table, out_dir / CSV_FILE)
    return {"command": "predict", "checkpoint": cfg.checkpoint, "test_time_flips": list(mirrors.axes),
            "largest_component": [task.label_names[c] for c in post],
            "num_written": len(written),
            "num_rejected": len(rejected), "written": written, "rejected": rejected, "output": str(out_dir),
            "predictions_csv": str(csv_path), "ok": bool(written)}
