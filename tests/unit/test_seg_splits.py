"""Fine-tuning splits: reproducible, disjoint, the baseline's every-5th split, listed validation kept."""
import pytest

from swinray.config import ConfigError, FinetuneConfig, SplitConfig, apply_overrides
from swinray.train.seg_data import split_cases


def rows(n, split="training"):
    return [{"case_id": f"c{i:03d}", "label": f"l{i}", "split": split, "path": f"p{i}"} for i in range(n)]


def ids(cases):
    return [c["case_id"] for c in cases]


def test_listed_order_gives_every_fifth_case_as_the_monai_baseline():
    cases = rows(23)
    train, val, test = split_cases(cases, SplitConfig(shuffle=False, test_fraction=0.0))
    assert test == []
    assert ids(val) == ids(cases[::5])
    assert ids(train) == [c["case_id"] for i, c in enumerate(cases) if i % 5]


def test_five_folds_put_every_case_in_validation_exactly_once_and_are_seeded():
    cases = rows(23)
    seen = []
    for fold in range(5):
        train, val, test = split_cases(cases, SplitConfig(fold=fold, seed=3))
        assert not set(ids(train)) & set(ids(val)) and len(train) + len(val) + len(test) == 23
        assert split_cases(cases, SplitConfig(fold=fold, seed=3)) == (train, val, test)
        seen += ids(val)
    assert sorted(seen + ids(test)) == ids(cases)
    assert split_cases(cases, SplitConfig(seed=4))[1] != split_cases(cases, SplitConfig(seed=3))[1]


def test_a_dataset_files_own_validation_list_is_the_split():
    cases = rows(6) + rows(2, "validation") + rows(1, "test")
    cases[-1]["label"] = None
    train, val, test = split_cases(cases, SplitConfig(test_fraction=0.0))
    assert len(train) == 6 and len(val) == 2 and all(c["split"] == "validation" for c in val)
    train, val, test = split_cases(cases, SplitConfig(use_listed_validation=False, test_fraction=0.0))
    assert len(train) + len(val) == 8 and test == []        # unlabelled test case never used


def test_label_fraction_keeps_a_seeded_subset_of_the_training_cases():
    cases = rows(40)
    full_train, val, test = split_cases(cases, SplitConfig())
    train, val_again, test_again = split_cases(cases, SplitConfig(label_fraction=0.25))
    assert val_again == val and test_again == test and len(train) == 6 and set(ids(train)) <= set(ids(full_train))
    assert split_cases(cases, SplitConfig(label_fraction=0.25)) == (train, val, test)


def test_smaller_label_fractions_are_subsets_of_larger_ones():
    cases = rows(208)                                      # MSD Hippocampus: 166 training cases
    subsets = [set(ids(split_cases(cases, SplitConfig(label_fraction=f, test_fraction=0.0))[0]))
               for f in (0.1, 0.25, 0.5, 1.0)]
    assert [len(s) for s in subsets] == [17, 42, 83, 166]
    assert subsets[0] < subsets[1] < subsets[2] < subsets[3]


@pytest.mark.parametrize("overrides, message", [
    ({"split.fold": 5}, r"split\.fold=5: must be in 0\.\.4"),
    ({"split.num_folds": 1}, r"split\.num_folds=1: must be at least 2"),
    ({"split.label_fraction": 0.0}, r"split\.label_fraction=0\.0: must be in \(0, 1\]"),
])
def test_bad_split_settings_are_refused_when_the_config_is_read_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(FinetuneConfig(), overrides)


def test_a_test_fold_is_held_out_first_and_never_moves_with_the_fold_the_seed_or_the_label_fraction():
    cases = rows(50)
    tests = {tuple(ids(split_cases(cases, SplitConfig(fold=f, seed=s, label_fraction=lf)).test))
             for f in (0, 3) for s in (0, 7) for lf in (0.1, 1.0)}
    assert len(tests) == 1 and len(next(iter(tests))) == 10             # 20% of 50, the same every time
    train, val, test = split_cases(cases, SplitConfig(fold=2, seed=7))
    assert not (set(ids(test)) & (set(ids(train)) | set(ids(val))))      # three disjoint sets
    assert len(train) + len(val) + len(test) == 50


def test_a_dataset_files_labelled_test_list_is_the_test_split():
    cases = rows(10) + rows(3, "test")
    cases[-3:] = [{**c, "case_id": f"t{i}"} for i, c in enumerate(cases[-3:])]
    assert ids(split_cases(cases, SplitConfig()).test) == ["t0", "t1", "t2"]
