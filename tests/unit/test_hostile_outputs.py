"""Evaluate and predict facing hostile cases and output places: a failing case is recorded and the
others go on, the CSV is always written, and an output folder never overwrites the inputs or writes
through a link. (Preprocessing reruns: tests/e2e/test_reruns.py.)"""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from hostile_files import fake_model, msd, write_case, write_dataset


def test_evaluate_records_a_failing_case_goes_on_and_writes_its_csv(tmp_path, monkeypatch):
    import swinray.seg.evaluate as ev
    from swinray.config import EvaluateConfig
    root = tmp_path / "Scored"
    write_dataset(root, msd([write_case(root, n) for n in ("ok0", "odd", "ok1")]))
    fake_model(monkeypatch, ev, "odd.nii.gz")
    cfg = EvaluateConfig(checkpoint=str(tmp_path / "model.pt"), data=str(root), split="all",
                         out_dir=str(tmp_path / "eval"))
    summary = ev.run_evaluate(cfg, log=lambda m: None)
    assert summary["ok"] and summary["num_cases"] == 2 and summary["num_rejected"] == 1
    assert summary["rejected"][0]["reason"].endswith("odd.nii.gz: unexpected RuntimeError: odd case")
    rows = Path(summary["per_case_csv"]).read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["ok0", "ok1"]


def test_predict_records_a_failing_file_goes_on_and_writes_its_csv(tmp_path, monkeypatch):
    import swinray.seg.predict as pr
    from swinray.config import PredictConfig
    root = tmp_path / "Scans"
    for name in ("ok0", "odd", "ok1"):
        write_case(root, name, label=False)
    fake_model(monkeypatch, pr, "odd.nii.gz")
    cfg = PredictConfig(checkpoint=str(tmp_path / "model.pt"), input=str(root / "imagesTr"),
                        output=str(tmp_path / "labels"))
    summary = pr.run_predict(cfg, log=lambda m: None)
    assert summary["ok"] and summary["num_written"] == 2 and summary["num_rejected"] == 1
    assert "odd.nii.gz: unexpected RuntimeError: odd case" in summary["rejected"][0]["reason"]
    table = (tmp_path / "labels" / "predictions.csv").read_text().splitlines()
    assert table[0] == "file,status,output,reason" and len(table) == 4
    assert sorted(p.name for p in (tmp_path / "labels").glob("*.nii.gz")) == ["ok0.nii.gz", "ok1.nii.gz"]


def test_predict_into_its_input_folder_is_refused_before_anything_is_written(tmp_path, capfd):
    from swinray.cli import main
    folder = tmp_path / "scans"
    write_case(folder, "s0", label=False)
    images = folder / "imagesTr"
    before = sorted(p.name for p in images.iterdir())
    code = main("predict", ["--checkpoint", str(tmp_path / "model.pt"), "--input", str(images),
                            "--output", str(images)])
    summary = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and summary["ok"] is False and "is the input folder" in summary["error"]
    assert sorted(p.name for p in images.iterdir()) == before


def test_predict_into_the_folder_its_linked_inputs_point_to_is_refused(tmp_path, capfd):
    """Inputs that are symlinks: their targets' folder is an input folder too."""
    from swinray.cli import main
    write_case(tmp_path / "scans", "s0", label=False)
    images = tmp_path / "scans" / "imagesTr"
    links = tmp_path / "links"
    links.mkdir()
    (links / "s0.nii.gz").symlink_to(images / "s0.nii.gz")
    code = main("predict", ["--checkpoint", str(tmp_path / "model.pt"), "--input", str(links),
                            "--output", str(images)])
    summary = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and "is the input folder" in summary["error"]
    assert sorted(p.name for p in images.iterdir()) == ["s0.nii.gz"]


def test_predict_into_a_file_is_refused_before_anything_is_written(tmp_path, capfd):
    from swinray.cli import main
    write_case(tmp_path / "scans", "s0", label=False)
    image = tmp_path / "scans" / "imagesTr" / "s0.nii.gz"
    before = image.read_bytes()
    code = main("predict", ["--checkpoint", str(tmp_path / "model.pt"), "--input", str(image), "--output", str(image)])
    summary = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and summary["ok"] is False and "s0.nii.gz is a file" in summary["error"]
    assert image.read_bytes() == before


def test_predict_replaces_a_symlink_in_its_output_folder_instead_of_writing_through_it(tmp_path):
    from swinray.seg.predict import write_label_map
    source = tmp_path / "in" / "imagesTr" / "s0.nii.gz"
    write_case(tmp_path / "in", "s0", label=False)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "s0.nii.gz").symlink_to(target)
    write_label_map(np.ones((24, 24, 12), np.uint8), source, out / "s0.nii.gz")
    assert target.read_text() == "keep me"
    assert not (out / "s0.nii.gz").is_symlink() and nib.load(out / "s0.nii.gz").shape == (24, 24, 12)
