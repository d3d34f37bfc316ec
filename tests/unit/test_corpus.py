"""Pretraining corpora: several collections of unlabelled CT as one dataset, each case keeping its
collection; files named alike in two collections stay apart; the cache key follows the folder set."""
import nibabel as nib
import numpy as np
import pytest

from swinray.config import ConfigError, DataConfig
from swinray.data.cache import cache_dir_for
from swinray.data.corpus import load_corpus
from swinray.data.inference import PRETRAIN_CT_SPACING_MM
from swinray.data.source import load_source


def write_ct(path, seed=0):
    volume = np.full((16, 16, 12), -1000, np.int16)
    volume[4:12, 4:12, 3:9] = np.random.default_rng(seed).integers(0, 80, (8, 8, 6))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1])), path)


@pytest.fixture
def collections(tmp_path):
    write_ct(tmp_path / "OpenKBP" / "imagesTr" / "pt_001.nii.gz")      # a generic folder name: named by its parent
    write_ct(tmp_path / "OpenKBP" / "imagesTr" / "pt_002.nii.gz", 1)
    write_ct(tmp_path / "LIDC" / "pt_001.nii.gz", 2)                   # the same file name in another collection
    (tmp_path / "corpus.txt").write_text("# one folder per line\nOpenKBP/imagesTr\n\nLIDC\n")
    return tmp_path


def test_collections_become_one_unlabelled_ct_dataset_with_the_papers_settings(collections):
    dataset = load_corpus((str(collections / "OpenKBP" / "imagesTr"), str(collections / "LIDC")))
    assert [(c.case_id, c.collection) for c in dataset.cases] == [
        ("OpenKBP-pt_001", "OpenKBP"), ("OpenKBP-pt_002", "OpenKBP"), ("LIDC-pt_001", "LIDC")]
    assert all(c.label is None and c.split == "training" for c in dataset.cases)
    assert dataset.task.modality == "CT" and dataset.task.spacing_mm == PRETRAIN_CT_SPACING_MM


def test_a_text_file_can_list_the_folders_and_the_cache_key_follows_the_folder_set(collections, tmp_path):
    listed = load_corpus((str(collections / "corpus.txt"),))
    both = load_corpus((str(collections / "OpenKBP" / "imagesTr"), str(collections / "LIDC")))
    one = load_corpus((str(collections / "LIDC"),))
    assert [c.case_id for c in listed.cases] == [c.case_id for c in both.cases]
    assert cache_dir_for(listed, tmp_path) == cache_dir_for(both, tmp_path) != cache_dir_for(one, tmp_path)


def test_a_missing_folder_or_a_second_dataset_is_refused_clearly(collections):
    with pytest.raises(ValueError, match="no such folder.*Nowhere"):
        load_corpus((str(collections / "LIDC"), str(collections / "Nowhere")))
    with pytest.raises(ConfigError, match="not both"):
        load_source(DataConfig(source=str(collections / "LIDC"), unlabelled=(str(collections / "LIDC"),)))


def test_the_cache_key_covers_what_preprocessing_reads_and_nothing_else(collections, tmp_path):
    """Commands and presets that differ only in the training ROI (or the task's name) share a cache."""
    from dataclasses import replace
    dataset = load_corpus((str(collections / "LIDC"),))
    other_roi = replace(dataset, task=replace(dataset.task, roi_size=(64, 64, 64), name="renamed"))
    other_spacing = replace(dataset, task=replace(dataset.task, spacing_mm=(1.0, 1.0, 1.0)))
    key = cache_dir_for(dataset, tmp_path).name.split("-")[-1]
    assert cache_dir_for(other_roi, tmp_path).name.split("-")[-1] == key
    assert cache_dir_for(other_spacing, tmp_path).name.split("-")[-1] != key


def test_a_runs_test_cases_or_a_list_can_be_left_out_of_the_corpus(collections, tmp_path):
    (tmp_path / "split.json").write_text('{"training": ["pt_003"], "validation": [], "test": ["pt_001"]}')
    data = DataConfig(unlabelled=(str(collections / "OpenKBP" / "imagesTr"), str(collections / "LIDC")),
                      exclude_cases=str(tmp_path / "split.json"))
    lines = []
    kept = load_source(data, lines.append)
    assert [c.case_id for c in kept.cases] == ["OpenKBP-pt_002"]          # pt_001 of both collections is out
    assert "2 case(s) left out" in lines[0]
    (tmp_path / "out.txt").write_text("# held out\npt_002\n")
    listed = load_source(DataConfig(unlabelled=data.unlabelled, exclude_cases=str(tmp_path / "out.txt")), print)
    assert [c.case_id for c in listed.cases] == ["OpenKBP-pt_001", "LIDC-pt_001"]
    with pytest.raises(ConfigError, match="exclude_cases=.*nope.json: cannot read"):
        load_source(DataConfig(unlabelled=data.unlabelled, exclude_cases=str(tmp_path / "nope.json")))
    (tmp_path / "other.txt").write_text("  # indented comment\ncase-0001\n")
    with pytest.raises(ConfigError, match="none of its 1 case id.*case-0001"):     # another naming scheme
        load_source(DataConfig(unlabelled=data.unlabelled, exclude_cases=str(tmp_path / "other.txt")))
    with pytest.raises(ConfigError, match="pretraining corpus"):
        load_source(DataConfig(source=str(collections / "LIDC"), exclude_cases=str(tmp_path / "out.txt")))
