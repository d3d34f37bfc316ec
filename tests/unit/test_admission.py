"""Admission relative to the dataset: a case whose headers claim far more than the dataset's median
case is refused before any worker reads it, with a reason naming its file, its cost, the median's
and the setting; real datasets pass whole, and a dataset of tiny volumes still takes an ordinary scan."""
import gzip
import json
import math
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile_files import fake_model, header_bytes, msd, peak_mb, write_case, write_dataset

from conftest import shared_dataset, write_dicom_series
from swinray.config import EvaluateConfig, PredictConfig, RunConfig, VolumeLimits
from swinray.data.admission import admit
from swinray.data.cases import Case
from swinray.data.datasets import load_dataset

MB = 2 ** 20


def honest_volume(path: Path, shape, dtype=np.int16, slope_inter=None) -> Path:
    """A real .nii.gz of zeros that claims exactly what it holds (a few hundred KB on disk)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([1.5, 1.5, 2.0, 1.0]), code=1)
    header.set_data_offset(352)
    if slope_inter:
        header.set_slope_inter(*slope_inter)
    remaining = math.prod(shape) * np.dtype(dtype).itemsize
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header.binaryblock + b"\0" * 4)
        while remaining:
            f.write(bytes(min(remaining, 16 * MB)))
            remaining -= min(remaining, 16 * MB)
    return path


def small_dataset(root: Path, n: int = 5) -> list[dict]:
    return [write_case(root, f"valid{i}") for i in range(n)]


@pytest.mark.parametrize("kind, shape, dtype, scaling, claimed", [
    ("zeros", (600, 600, 700), np.int16, None, "(600, 600, 700) voxels of int16"),
    ("scaled", (500, 500, 400), np.uint16, (1.0, -1024.0), "(500, 500, 400) voxels of uint16"),
], ids=["just_under_the_absolute_limits", "float_scaling"])
def test_an_honest_volume_far_above_the_median_is_refused_from_its_header(tmp_path, kind, shape, dtype, scaling,
                                                                          claimed):
    root = tmp_path / "Mixed"
    entries = small_dataset(root)
    honest_volume(root / "imagesTr" / f"{kind}.nii.gz", shape, dtype, scaling)
    write_dataset(root, msd([*entries, {"image": f"./imagesTr/{kind}.nii.gz"}]))
    dataset = load_dataset(root, log=lambda m: None)
    tracemalloc.start()
    try:
        admission = admit(dataset.cases, dataset.task.spacing_mm, dataset.limits)
        peak = tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()
    assert [c.case_id for c in admission.admitted] == [f"valid{i}" for i in range(5)]
    ((case, reason),) = admission.refused
    assert case.case_id == kind and reason.startswith(f"{root}/imagesTr/{kind}.nii.gz: its header claims {claimed}, ")
    assert "x the median case of these 6 (0.09 MB); above the limit max_times_median=16 (cases under " \
           "relative_floor_mb=32 are always admitted)" in reason
    assert peak < 2                                                     # headers only


def test_the_preprocessing_driver_sends_workers_only_admitted_cases(tmp_path, monkeypatch):
    import swinray.data.preprocess as pre
    root = tmp_path / "Driver"
    entries = small_dataset(root)
    honest_volume(root / "imagesTr" / "zeros.nii.gz", (600, 600, 700))
    write_dataset(root, msd([*entries, {"image": "./imagesTr/zeros.nii.gz"}]))
    dataset = load_dataset(root, log=lambda m: None)
    sent = []

    def local_cases(todo, task, cache, progress=None, limits=None):     # Ray's map, in this process
        sent.extend(c.case_id for c in todo)
        return [json.loads(pre._process_row({"id": i}, todo, task, cache, limits)["row"]) for i in range(len(todo))]
    monkeypatch.setattr(pre, "init_ray", lambda run: {"nodes": 1, "cpus": 1})
    monkeypatch.setattr(pre, "run_cases", local_cases)
    summary = pre.preprocess_dataset(dataset, tmp_path / "cache", 0, RunConfig(), log=lambda m: None)
    assert sent == [f"valid{i}" for i in range(5)]
    assert (summary["cases_written"], summary["cases_rejected"], summary["ok"]) == (5, 1, True)
    assert summary["median_case_mb"] == pytest.approx(0.09, abs=0.01) and summary["worker_peak_rss_mb"] > 0
    (row,) = json.loads((tmp_path / "cache" / "rejected.json").read_text())
    assert row["case_id"] == "zeros" and "max_times_median=16" in row["reason"]
    again = pre.preprocess_dataset(dataset, tmp_path / "cache", 0, RunConfig(), log=lambda m: None)
    assert sent == [f"valid{i}" for i in range(5)] and again["cases_rejected"] == 1    # refused again, unread
    assert again["worker_peak_rss_mb"] is None                                        # no worker ran


@pytest.mark.parametrize("modality", [None, {"0": "CT"}], ids=["ct_or_mri_from_a_volume", "ct_window_from_labels"])
def test_task_inference_reads_only_cases_admitted_against_the_median(tmp_path, modality):
    """Task inference reads whole volumes on the driver (to tell CT from MRI, for the HU inside the
    labels): an outsized honest case listed first is named and left unread, and the task is the one
    the typical cases alone give."""
    root = tmp_path / "Outsized"
    entries = small_dataset(root)
    meta = {k: v for k, v in msd(entries).items() if modality or k != "modality"}
    write_dataset(root, meta)
    typical_task = load_dataset(root, log=lambda m: None).task
    shape = (320, 320, 200)                                             # 39 MB of int16, a 40 KB file
    image = honest_volume(root / "imagesTr" / "outsized.nii.gz", shape)
    honest_volume(root / "labelsTr" / "outsized.nii.gz", shape, np.uint8)
    outsized = {"image": "./imagesTr/outsized.nii.gz", "label": "./labelsTr/outsized.nii.gz"}
    write_dataset(root, {**meta, "training": [outsized, *entries]})
    said = []
    dataset, peak = peak_mb(lambda: load_dataset(root, log=said.append))
    assert dataset.task == typical_task
    assert len(dataset.cases) == 6                                      # preprocessing refuses it, with why
    assert any(m.startswith(f"task inference: skipped {image}: its header claims {shape} voxels of int16, ")
               and "MB to load with the rest of its case" in m for m in said)
    assert peak < 4                                                     # headers and small volumes only


def test_the_floor_admits_an_ordinary_scan_among_tiny_volumes(tmp_path):
    """24 x 24 x 12 cases (0.09 MB) and one 128 x 128 x 96 CT (12.6 MB, 140x): under the 32 MB floor."""
    root = tmp_path / "Tiny"
    entries = small_dataset(root)
    entries.append(write_case(root, "ordinary", shape=(128, 128, 96), label=False))
    write_dataset(root, msd(entries))
    dataset = load_dataset(root, log=lambda m: None)
    assert len(admit(dataset.cases, dataset.task.spacing_mm, dataset.limits).admitted) == 6
    strict = admit(dataset.cases, dataset.task.spacing_mm, VolumeLimits(relative_floor_mb=0))
    assert [c.case_id for c, _ in strict.refused] == ["ordinary"]


def test_unreadable_headers_are_left_to_the_workers_and_out_of_the_median(tmp_path):
    root = tmp_path / "Broken"
    entries = small_dataset(root, 3)
    (root / "imagesTr" / "claims.nii.gz").write_bytes(gzip.compress(header_bytes((1024, 1024, 1024), np.uint8)))
    (root / "imagesTr" / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08")
    entries += [{"image": "./imagesTr/claims.nii.gz"}, {"image": "./imagesTr/cut.nii.gz"},
                {"image": "./imagesTr/missing.nii.gz"}]
    write_dataset(root, msd(entries))
    dataset = load_dataset(root, log=lambda m: None)
    admission = admit(dataset.cases, dataset.task.spacing_mm, VolumeLimits(relative_floor_mb=0))
    assert len(admission.admitted) == 6 and not admission.refused      # each refused by its worker, with why
    assert admission.median_mb == pytest.approx(0.09, abs=0.01)        # of the 3 measured cases


def test_a_dicom_series_is_measured_from_its_first_header(tmp_path):
    root = tmp_path / "Dicom"
    cases = [Case(f"valid{i}", (write_case(root, f"valid{i}", label=False)["image"].replace(".", str(root), 1),),
                  None, "training") for i in range(3)]
    series = write_dicom_series(tmp_path / "series", np.zeros((128, 128, 20), np.int16), (1.0, 1.0, 2.0), (0, 0, 0))
    cases.append(Case("series", (str(series),), None, "training"))
    admission = admit(cases, (1.5, 1.5, 2.0), VolumeLimits(relative_floor_mb=0))
    ((case, reason),) = admission.refused
    assert case.case_id == "series"
    assert reason.startswith(f"{series}: its header claims (128, 128, 20) voxels of 16-bit DICOM, 2.4 MB")


def test_real_datasets_pass_whole():
    """The default (16x the median, 32 MB floor) refuses no case of real data."""
    for source in ("Task04_Hippocampus", "OpenKBP_HN_OAR", "OpenKBP_HN_CT/imagesTr"):
        dataset = load_dataset(shared_dataset(source), log=lambda m: None)
        admission = admit(dataset.cases, dataset.task.spacing_mm, dataset.limits)
        assert admission.refused == [] and len(admission.admitted) == len(dataset.cases) > 100, source


def test_evaluate_and_predict_refuse_an_outsized_input_unread(tmp_path, monkeypatch):
    import swinray.seg.evaluate as ev
    import swinray.seg.predict as pr
    root = tmp_path / "Scored"
    entries = small_dataset(root, 3)
    entries.append(write_case(root, "outsized", shape=(128, 128, 96)))
    write_dataset(root, msd(entries))
    limits = VolumeLimits(relative_floor_mb=0)
    fake_model(monkeypatch, ev, "outsized.nii.gz")          # segmenting it would raise RuntimeError
    scored = ev.run_evaluate(EvaluateConfig(checkpoint=str(tmp_path / "model.pt"), data=str(root), split="all",
                                            out_dir=str(tmp_path / "eval"), limits=limits), log=lambda m: None)
    assert scored["ok"] and scored["num_cases"] == 3 and scored["num_rejected"] == 1
    assert scored["rejected"][0]["case_id"] == "outsized" and "max_times_median=16" in scored["rejected"][0]["reason"]
    fake_model(monkeypatch, pr, "outsized.nii.gz")
    predicted = pr.run_predict(PredictConfig(checkpoint=str(tmp_path / "model.pt"), input=str(root / "imagesTr"),
                                             output=str(tmp_path / "labels"), limits=limits), log=lambda m: None)
    assert predicted["num_written"] == 3 and predicted["num_rejected"] == 1
    assert "outsized.nii.gz: its header claims (128, 128, 96)" in predicted["rejected"][0]["reason"]


@pytest.mark.parametrize("setting", [{"max_times_median": 0.5}, {"max_times_median": float("nan")},
                                     {"max_times_median": float("inf")}, {"relative_floor_mb": -1.0}])
def test_the_relative_limits_are_checked_like_the_others(setting):
    from swinray.errors import ConfigError
    with pytest.raises(ConfigError, match=next(iter(setting))):
        VolumeLimits(**setting)


def test_each_collection_of_a_corpus_is_judged_against_its_own_median(tmp_path):
    """Head-and-neck crops beside whole abdominal scans are two typical sizes: neither is outsized,
    but a case far above its own collection's median still is."""
    def case(collection, name, shape):
        path = tmp_path / collection / f"{name}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.diag([1.5, 1.5, 2.0, 1.0])), path)
        return Case(f"{collection}-{name}", (str(path),), None, "training", collection)
    small = [case("headneck", f"hn{i}", (16, 16, 16)) for i in range(4)]
    large = [case("abdomen", f"ab{i}", (64, 64, 64)) for i in range(2)]
    outsized = case("headneck", "claims_much", (64, 64, 64))
    limits = VolumeLimits(max_times_median=8, relative_floor_mb=0.01)
    admission = admit([*small, *large, outsized], (1.5, 1.5, 2.0), limits)
    assert admission.admitted == [*small, *large]
    [(refused, reason)] = admission.refused
    assert refused is outsized
    assert "64x the median case of headneck's 5" in reason
