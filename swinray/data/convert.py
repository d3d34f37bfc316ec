"""``platform.convert btcv``: the BTCV challenge's download, as the reference Swin UNETR code reads it.

BTCV ships as ``RawData/Training/{img,label}/img0001.nii.gz, label0001.nii.gz`` and
``RawData/Testing/img/``. The reference code (and our ``BTCV`` task) reads ``dataset_0.json`` with
``imagesTr/``, ``labelsTr/`` and ``imagesTs/`` beside it, validating on cases 35 to 40 and training
on the other labelled ones. Files are hard-linked when the output is on the same disk (no copy),
copied otherwise.

    python -m platform.convert btcv --src /data/BTCV/RawData --out /data/BTCV
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from swinray.config import ConfigError, ConvertConfig
from swinray.data.tasks import BTCV_LABELS

REFERENCE_VALIDATION = {f"{i:04d}" for i in range(35, 41)}   # dataset_0.json of the reference code
CASE_NUMBER = re.compile(r"^(?:img|label)(\d+)\.nii(?:\.gz)?$")


def _numbered(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = CASE_NUMBER.match(path.name)
        if match:
            found[match.group(1)] = path
    return found


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:                     # another disk, or a filesystem without hard links
        shutil.copy2(src, dst)


def convert_btcv(src: Path, out: Path, log=print) -> dict:
    training = src / "Training"
    images, labels = _numbered(training / "img"), _numbered(training / "label")
    tests = _numbered(src / "Testing" / "img")
    if not images:
        raise ConfigError(f"{training / 'img'}: no img<NNNN>.nii.gz files; --src must be BTCV's RawData "
                          "folder (holding Training/img, Training/label and Testing/img)")
    unlabelled = sorted(set(images) - set(labels))
    orphans = sorted(set(labels) - set(images))
    entries = {"training": [], "validation": []}
    for number in sorted(set(images) & set(labels)):
        split = "validation" if number in REFERENCE_VALIDATION else "training"
        image_dst, label_dst = f"imagesTr/img{number}.nii.gz", f"labelsTr/label{number}.nii.gz"
        _place(images[number], out / image_dst)
        _place(labels[number], out / label_dst)
        entries[split].append({"image": image_dst, "label": label_dst})
    test = []
    for number, path in tests.items():
        _place(path, out / f"imagesTs/img{number}.nii.gz")
        test.append(f"imagesTs/img{number}.nii.gz")
    manifest = {"description": "BTCV (Beyond the Cranial Vault) abdomen CT, converted by platform.convert btcv",
                "labels": {str(i): name for i, name in enumerate(BTCV_LABELS)}, "modality": {"0": "CT"},
                "name": "btcv", "numTraining": len(entries["training"]) + len(entries["validation"]),
                "numTest": len(test), "tensorImageSize": "3D", **entries, "test": test}
    dataset_file = out / "dataset_0.json"
    dataset_file.write_text(json.dumps(manifest, indent=2) + "\n")
    for number in unlabelled:
        log(f"warning: {images[number]} has no label{number} in {training / 'label'}; left out")
    for number in orphans:
        log(f"warning: {labels[number]} has no img{number} in {training / 'img'}; left out")
    log(f"BTCV: {len(entries['training'])} training, {len(entries['validation'])} validation and {len(test)} "
        f"test case(s) -> {dataset_file}")
    return {"dataset_file": str(dataset_file), "training": len(entries["training"]),
            "validation": len(entries["validation"]), "test": len(test),
            "left_out": [str(images[n]) for n in unlabelled] + [str(labels[n]) for n in orphans]}


def run_convert(cfg: ConvertConfig, log=print) -> dict:
    if not cfg.src or not cfg.out:
        raise ConfigError("convert needs --src (the downloaded data) and --out (the folder to write)")
    src, out = Path(cfg.src), Path(cfg.out)
    if not src.is_dir():
        raise ConfigError(f"src={src}: no such folder")
    summary = convert_btcv(src, out, log)
    return {"command": "convert", "format": cfg.format, **summary, "ok": True}
