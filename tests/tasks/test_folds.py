"""Subject-disjoint folds: no subject leaks across train/valid/test; every row tested once."""

from __future__ import annotations

import numpy as np
import pytest

from msaflow.tasks.folds import fold_splits, subject_folds


def dataset(n_subjects: int = 23, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Subjects with 1-6 rows each (segments of one interview) and one PHQ-9 score per subject."""
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(n_subjects):
        phq = float(rng.integers(0, 28))
        rows = int(rng.integers(1, 7))
        subjects += [f"s{s:02d}"] * rows
        labels += [phq] * rows
    order = rng.permutation(len(subjects))  # rows of one subject are not contiguous
    return [subjects[i] for i in order], np.asarray(labels)[order]


def subjects_of(subjects, idx) -> set[str]:
    return {subjects[i] for i in idx}


def test_subject_folds_are_disjoint_and_cover_every_row_once():
    subjects, _ = dataset()
    folds = subject_folds(subjects, k=5, seed=0)
    assert len(folds) == 5
    n = len(subjects)
    counts = np.zeros(n, dtype=int)
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert not subjects_of(subjects, train) & subjects_of(subjects, test)
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
        counts[test] += 1
    assert (counts == 1).all()
    sizes = [len(subjects_of(subjects, test)) for _, test in folds]
    assert max(sizes) - min(sizes) <= 1  # 23 subjects -> 5,5,5,4,4


def test_subject_folds_are_deterministic_for_a_seed():
    subjects, _ = dataset()
    a, b = subject_folds(subjects, 5, seed=7), subject_folds(subjects, 5, seed=7)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    c = subject_folds(subjects, 5, seed=8)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_too_few_subjects_fail_clearly():
    with pytest.raises(ValueError, match="at least 5 subjects; got 3 unique"):
        subject_folds(["a", "a", "b", "c"], k=5)
    with pytest.raises(ValueError, match="at least 5 subjects; got 4 unique"):
        fold_splits(["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0], k=5)
    with pytest.raises(ValueError, match="k must be"):
        subject_folds(["a", "b"], k=1)


def test_fold_splits_are_pairwise_subject_disjoint_and_stratified():
    subjects, labels = dataset()
    folds = fold_splits(subjects, labels, k=5, seed=0, valid_fraction=0.2)
    n = len(subjects)
    tested = np.zeros(n, dtype=int)
    per_subject = {s: labels[subjects.index(s)] for s in set(subjects)}
    n_dep = sum(v > 9 for v in per_subject.values())
    assert 0 < n_dep < len(per_subject)
    for fold in folds:
        parts = {k: subjects_of(subjects, fold[k]) for k in ("train", "valid", "test")}
        assert all(parts[k] for k in parts)
        assert not parts["train"] & parts["valid"]
        assert not parts["train"] & parts["test"]
        assert not parts["valid"] & parts["test"]
        assert sorted(np.concatenate(list(fold.values())).tolist()) == list(range(n))
        tested[fold["test"]] += 1
        # stratified: each test fold's depressed count within one of its share
        dep = sum(per_subject[s] > 9 for s in parts["test"])
        assert abs(dep - n_dep * len(parts["test"]) / len(per_subject)) <= 1.0
        assert len(parts["valid"]) == round(0.2 * (len(parts["train"]) + len(parts["valid"])))
    assert (tested == 1).all()


def test_fold_splits_are_deterministic_and_work_without_labels():
    subjects, labels = dataset()
    a = fold_splits(subjects, labels, k=5, seed=3)
    b = fold_splits(subjects, labels, k=5, seed=3)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    plain = fold_splits(subjects, None, k=4, seed=0, valid_fraction=0.25)
    assert len(plain) == 4 and all(len(f["valid"]) > 0 for f in plain)
    with pytest.raises(ValueError, match="valid_fraction"):
        fold_splits(subjects, labels, valid_fraction=1.0)
    with pytest.raises(ValueError, match="labels has 2 entries"):
        fold_splits(subjects, [1.0, 2.0])
