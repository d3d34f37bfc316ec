"""Small generated hostile files for the hostile-input tests: crafted headers written byte for byte,
valid small CT cases, dataset files, a memory probe, and a stand-in model for evaluate and predict."""
import json
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np

from swinray.data.nifti import CaseError
from swinray.data.tasks import TaskSpec

TASK = TaskSpec("Hostile", "CT", ("CT",), ("background", "organ"), (1.5, 1.5, 2.0), "ct_window", (-175.0, 250.0),
                (64, 64, 64))
MB = 2 ** 20


def header_bytes(shape, dtype=np.int16, zooms=(1.5, 1.5, 2.0)) -> bytes:
    """A NIfTI-1 header claiming ``shape`` voxels of ``dtype``, padded to its 352-byte data offset."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms(zooms)
    header.set_sform(np.diag([*zooms[:3], 1.0]), code=1)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4


def write_case(folder: Path, name: str, shape=(24, 24, 12), zooms=(1.5, 1.5, 2.0), label=True) -> dict:
    """A valid small CT case: a body of 40 HU in air, an organ label inside it."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    image = np.full(shape, -1000, np.int16)
    image[4:-4, 4:-4, 2:-2] = 40
    nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"{name}.nii.gz")
    entry = {"image": f"./imagesTr/{name}.nii.gz"}
    if label:
        seg = np.zeros(shape, np.uint8)
        seg[8:14, 8:14, 4:8] = 1
        nib.save(nib.Nifti1Image(seg, affine), folder / "labelsTr" / f"{name}.nii.gz")
        entry["label"] = f"./labelsTr/{name}.nii.gz"
    return entry


def write_dataset(root: Path, meta) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def msd(entries, **extra) -> dict:
    return {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}, "training": entries, **extra}


def peak_mb(fn) -> tuple[object, float]:
    """(fn's result or the CaseError it raised, peak MB allocated meanwhile, as tracemalloc sees it)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except CaseError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def fake_model(monkeypatch, module, fail_on: str):
    """``module``'s model is a stub and its segmentation a copy of the truth, except for ``fail_on``,
    whose segmentation raises what no case error covers."""
    from swinray.seg.model_input import Segmented
    meta = {"task": json.loads(json.dumps(TASK.__dict__)), "roi_size": [64, 64, 64], "metrics": {"val_dice": 0.5}}
    monkeypatch.setattr(module, "open_model", lambda path, device: (None, meta))

    def segment(model, case, task, *args, **kwargs):
        if fail_on in case.image[0]:
            raise RuntimeError("odd case")
        image = nib.load(case.image[0])
        truth = np.asanyarray(nib.load(case.label).dataobj) if case.label else None
        labels = truth if truth is not None else np.zeros(image.shape, np.uint8)
        return Segmented(labels, truth, image.affine, 1, labels)
    monkeypatch.setattr(module, "segment_case", segment)
