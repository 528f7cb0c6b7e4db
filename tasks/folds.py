"""Subject-disjoint cross-validation folds (5-fold CV by subject on CMDC depression).

Rows of one subject (one interview cut into segments) are highly correlated, so a subject never sits
on both sides of a split. Folds are built over *unique subjects* with a seeded shuffle, then mapped
back to row indices: every row is in exactly one test fold, and the same seed gives the same folds.

``fold_splits`` also stratifies by the subject's class (PHQ-9 > ``threshold`` by default, the MMCL
paper's "clinical threshold score of 9") so each fold holds depressed and non-depressed subjects in
about the dataset's ratio, and carves a subject-disjoint validation set from each fold's training
subjects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unique_subjects(subjects: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique subjects (sorted, so the input order of rows does not matter) and each row's id."""
    if k < 2:
        raise ValueError(f"k must be >= 2 folds, got {k}")
    names = np.asarray([str(s) for s in subjects])
    uniq, row_subject = np.unique(names, return_inverse=True)
    if len(uniq) < k:
        raise ValueError(
            f"{k}-fold cross-validation by subject needs at least {k} subjects; "
            f"got {len(uniq)} unique subject(s) in {len(names)} rows"
        )
    return uniq, row_subject


def _rows_of(subject_ids: np.ndarray, row_subject: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(row_subject, subject_ids)).astype(np.int64)


def _deal(groups: list[np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle each group of subject ids and deal them round-robin into k folds.

    Dealing group after group, continuing where the last left off, keeps every group's share per
    fold within one subject and fold sizes within one subject of each other.
    """
    folds: list[list[int]] = [[] for _ in range(k)]
    slot = 0
    for group in groups:
        for sid in rng.permutation(group):
            folds[slot % k].append(int(sid))
            slot += 1
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds]


def subject_folds(
    subjects: Sequence[str], k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds of (train_idx, test_idx) row indices; no subject in both train and test of a fold.

    Subjects are shuffled with ``seed`` and dealt into k folds of nearly equal subject counts.
    Raises ValueError when there are fewer unique subjects than k.
    """
    uniq, row_subject = _unique_subjects(subjects, k)
    rng = np.random.default_rng(seed)
    out = []
    for test_subjects in _deal([np.arange(len(uniq))], k, rng):
        test = _rows_of(test_subjects, row_subject)
        train = np.setdiff1d(np.arange(len(row_subject)), test).astype(np.int64)
        out.append((train, test))
    return out


def _subject_classes(
    row_subject: np.ndarray,
    n_subjects: int,
    labels: Sequence[float] | None,
    threshold: float | None,
) -> np.ndarray:
    """One stratification class per subject (all 0 without labels).

    A subject's label is the mean of its rows' labels (CMDC gives one PHQ-9 per subject); with a
    ``threshold`` the class is ``label > threshold``, otherwise the label itself is the class.
    """
    if labels is None:
        return np.zeros(n_subjects, dtype=np.int64)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(y) != len(row_subject):
        raise ValueError(f"labels has {len(y)} entries but subjects has {len(row_subject)}")
    per_subject = np.bincount(row_subject, weights=y, minlength=n_subjects) / np.bincount(
        row_subject, minlength=n_subjects
    )
    if threshold is not None:
        return (per_subject > threshold).astype(np.int64)
    return np.round(per_subject).astype(np.int64)


def _stratified_order(ids: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ids`` shuffled within each class and interleaved in proportion to class sizes, so any
    prefix of the result keeps the classes' ratio (to within one subject per class)."""
    order, keys = [], []
    for c in np.unique(classes):
        members = rng.permutation(ids[classes == c])
        order.append(members)
        keys.append((np.arange(len(members)) + 0.5) / len(members))
    return np.concatenate(order)[np.argsort(np.concatenate(keys), kind="stable")]


def fold_splits(
    subjects: Sequence[str],
    labels: Sequence[float] | None = None,
    k: int = 5,
    seed: int = 0,
    valid_fraction: float = 0.2,
    threshold: float | None = 9.0,
) -> list[dict[str, np.ndarray]]:
    """k folds of ``{"train", "valid", "test"}`` row indices, pairwise subject-disjoint.

    Test folds are stratified by subject class (see ``_subject_classes``) and cover every row
    exactly once. ``valid_fraction`` of each fold's training subjects (at least one; stratified too)
    become its validation set; at least one training subject is always kept.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    uniq, row_subject = _unique_subjects(subjects, k)
    classes = _subject_classes(row_subject, len(uniq), labels, threshold)
    groups = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    rng = np.random.default_rng(seed)
    test_folds = _deal(groups, k, rng)
    out = []
    for test_subjects in test_folds:
        rest = np.setdiff1d(np.arange(len(uniq)), test_subjects)
        if len(rest) < 2:
            raise ValueError(
                f"fold has {len(rest)} training subject(s); need 2 to carve a validation set"
            )
        n_valid = min(max(1, round(valid_fraction * len(rest))), len(rest) - 1)
        valid_subjects = np.sort(_stratified_order(rest, classes[rest], rng)[:n_valid])
        train_subjects = np.setdiff1d(rest, valid_subjects)
        out.append(
            {
                "train": _rows_of(train_subjects, row_subject),
                "valid": _rows_of(valid_subjects, row_subject),
                "test": _rows_of(test_subjects, row_subject),
            }
        )
    return out
