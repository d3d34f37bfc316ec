"""DICOM series (CT as TCIA distributes it) are read through MONAI's PydicomReader after the same
kind of checks as NIfTI: geometry and HU survive the round trip, preprocessing gives the same
cache as from NIfTI, and broken series are refused naming the folder and the problem."""
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import write_dicom_series
from swinray.data.cache import read_case
from swinray.data.case_pipeline import process_case
from swinray.data.corpus import load_corpus
from swinray.data.datasets import load_dataset
from swinray.data.nifti import CaseError, read_verified
from swinray.data.phantom import generate_case

SPACING, ORIGIN = (0.8, 0.9, 2.5), (12.0, -30.0, 40.0)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """The phantom's HU volume as a DICOM series and as NIfTI with the same geometry."""
    tmp = tmp_path_factory.mktemp("dicom")
    hu = np.asarray(generate_case(3, (48, 48, 16)).image, dtype=np.int16)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    nifti = tmp / "nifti" / "case.nii.gz"
    nifti.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, affine), nifti)
    series = write_dicom_series(tmp / "LIDC" / "patient1" / "study1" / "series1", hu, SPACING, ORIGIN)
    return tmp, hu, affine, nifti, series


def test_geometry_and_hounsfield_units_survive_the_round_trip(ct):
    _, hu, affine, nifti, series = ct
    volume = read_verified(series)                     # a folder: read as a DICOM series
    assert volume.array.shape == hu.shape and np.array_equal(volume.array, hu)     # -1024 intercept applied
    assert np.allclose(volume.affine, affine, atol=1e-4)
    assert np.allclose(volume.affine, read_verified(nifti).affine, atol=1e-4)


def test_a_series_tree_is_a_corpus_and_preprocesses_exactly_as_its_nifti(ct, tmp_path):
    tmp, _, _, nifti, _ = ct
    corpus = load_corpus((str(tmp / "LIDC"),))
    (case,) = corpus.cases
    assert case.case_id == "LIDC-patient1_study1_series1" and corpus.task.modality == "CT"
    from_nifti = load_dataset(nifti.parent).cases[0]
    rows = [process_case(c, corpus.task, tmp_path / name) for c, name in ((case, "dicom"), (from_nifti, "nifti"))]
    assert [r["status"] for r in rows] == ["written", "written"], rows
    (a, _), (b, _) = (read_case(r["path"]) for r in rows)
    assert np.array_equal(a, b) and np.allclose(rows[0]["affine"], rows[1]["affine"], atol=1e-4)


@pytest.mark.parametrize("breakage, message", [
    ("missing", r"missing slice\(s\): 5.00 mm between the slices .* \(1 missing\)"),
    ("mixed", r"2 series mixed in one folder"),
    ("duplicate", r"2 slices at the same position"),
    ("not_dicom", r"slice003.dcm: not a readable DICOM file"),
])
def test_a_broken_series_is_refused_naming_the_folder_and_the_problem(ct, tmp_path, breakage, message):
    _, hu, _, _, series = ct
    folder = tmp_path / "series"
    if breakage == "missing":
        write_dicom_series(folder, hu, SPACING, ORIGIN, skip=(7,))
    else:
        shutil.copytree(series, folder)
    if breakage == "mixed":
        write_dicom_series(folder, hu[:, :, :4], SPACING, ORIGIN, name="other")
    if breakage == "duplicate":
        shutil.copy(folder / "slice005.dcm", folder / "slice005-copy.dcm")
    if breakage == "not_dicom":
        (folder / "slice003.dcm").write_bytes(b"not a DICOM file at all")
    with pytest.raises(CaseError, match=message) as error:
        read_verified(folder)
    assert str(folder) in str(error.value)


def test_a_dataset_file_may_list_a_series_folder_as_an_image(ct):
    tmp, hu, _, _, _ = ct
    (tmp / "dataset.json").write_text(
        '{"modality": {"0": "CT"}, "training": [{"image": "LIDC/patient1/study1/series1"}]}')
    dataset = load_dataset(tmp)
    (case,) = dataset.cases
    assert case.case_id == "series1" and np.array_equal(read_verified(case.image[0]).array, hu)
    (tmp / "dataset.json").unlink()
