"""Feature standardisation fit on train: statistics from train's valid frames only, same transform
elsewhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from msaflow.feature_store.schema import SplitData
from msaflow.tasks.data import (
    Standardization,
    fit_standardization,
    iterate_batches,
    split_to_tensors,
    standardize_splits,
)


def _split(features: dict[str, np.ndarray], lengths: dict[str, list[int]]) -> SplitData:
    n = len(next(iter(features.values())))
    return SplitData(
        ids=np.array([str(i) for i in range(n)]),
        labels=np.zeros(n, dtype=np.float32),
        features={m: np.asarray(v, dtype=np.float32) for m, v in features.items()},
        lengths={m: np.asarray(v, dtype=np.int64) for m, v in lengths.items()},
    )


def _train() -> SplitData:
    # audio (2 rows, T=3, d=2): row 0 has 2 valid frames, row 1 has 1; padded frames hold 1e6
    audio = [[[1.0, 5.0], [3.0, 5.0], [1e6, 1e6]], [[5.0, 5.0], [1e6, 1e6], [1e6, 1e6]]]
    text = [[[0.0], [2.0], [4.0]], [[6.0], [8.0], [10.0]]]
    return _split({"audio": audio, "text": text}, {"audio": [2, 1], "text": [3, 3]})


def test_statistics_come_from_valid_train_frames_only():
    stats = fit_standardization(_train())
    # audio dim 0 over valid frames {1, 3, 5}: mean 3, population std sqrt(8/3); the 1e6 padding is
    # ignored
    np.testing.assert_allclose(stats.mean["audio"], [3.0, 5.0])
    np.testing.assert_allclose(stats.std["audio"][0], np.sqrt(8 / 3))
    assert stats.frames == {"audio": 3, "text": 6}
    np.testing.assert_allclose(stats.mean["text"], [5.0])
    np.testing.assert_allclose(stats.std["text"], [np.std([0, 2, 4, 6, 8, 10])])


def test_constant_dimension_is_centred_not_divided_by_zero():
    out, stats = standardize_splits({"train": _train()})
    # audio dim 1 is 5.0 on every valid frame: std taken as 1, so it becomes exactly 0
    assert stats.constant == {"audio": [1], "text": []}
    assert stats.std["audio"][1] == 1.0
    a = out["train"].features["audio"]
    assert np.isfinite(a).all()
    assert a[0, 0, 1] == 0.0 and a[0, 1, 1] == 0.0 and a[1, 0, 1] == 0.0


def test_padded_frames_stay_zero_and_valid_frames_are_standardised():
    out, _ = standardize_splits({"train": _train()})
    a = out["train"].features["audio"]
    np.testing.assert_array_equal(a[0, 2], [0.0, 0.0])
    np.testing.assert_array_equal(a[1, 1:], np.zeros((2, 2)))
    valid = np.concatenate([a[0, :2, 0], a[1, :1, 0]])
    np.testing.assert_allclose([valid.mean(), valid.std()], [0.0, 1.0], atol=1e-6)


def test_valid_and_test_use_the_train_statistics():
    train = _train()
    shifted = _split(
        {"audio": np.full((2, 3, 2), 100.0), "text": np.full((2, 3, 1), -7.0)},
        {"audio": [3, 2], "text": [3, 1]},
    )
    out, stats = standardize_splits({"train": train, "valid": shifted, "test": shifted})
    expected = (100.0 - 3.0) / np.sqrt(8 / 3)
    for name in ("valid", "test"):
        a = out[name].features["audio"]
        np.testing.assert_allclose(a[0, :, 0], expected, rtol=1e-6)  # not re-fit: would give 0
        np.testing.assert_allclose(a[0, :, 1], 95.0)  # constant dim: only centred on train's mean 5
        np.testing.assert_array_equal(a[1, 2], [0.0, 0.0])  # its padding stays 0
        t = out[name].features["text"]
        np.testing.assert_allclose(
            t[0, :, 0], (-7.0 - 5.0) / np.std([0, 2, 4, 6, 8, 10]), rtol=1e-6
        )
        np.testing.assert_array_equal(t[1, 1:, 0], [0.0, 0.0])
    assert stats.fit_on == "train"


def test_inputs_are_not_modified_and_switch_off_is_identity():
    train = _train()
    before = train.features["audio"].copy()
    standardize_splits({"train": train})
    np.testing.assert_array_equal(
        train.features["audio"], before
    )  # shared-cache arrays stay as loaded
    same, stats = standardize_splits({"train": train}, enabled=False)
    assert stats is None and same["train"] is train


def test_refitting_standardised_data_is_the_identity():
    rng = np.random.default_rng(0)
    split = _split(
        {"audio": rng.normal(50.0, 20.0, (30, 4, 3))}, {"audio": rng.integers(1, 5, 30).tolist()}
    )
    once, _ = standardize_splits({"train": split})
    twice, stats = standardize_splits(once)
    np.testing.assert_allclose(stats.mean["audio"], 0.0, atol=1e-5)
    np.testing.assert_allclose(
        twice["train"].features["audio"], once["train"].features["audio"], atol=1e-5
    )


def test_statistics_round_trip_through_json():
    _, stats = standardize_splits({"train": _train()})
    d = json.loads(json.dumps(stats.to_dict()))
    assert d["fit_on"] == "train" and d["modalities"]["audio"]["frames"] == 3
    assert d["modalities"]["audio"]["constant_dims"] == [1]
    back = Standardization.from_dict(d)
    np.testing.assert_array_equal(back.std["audio"], stats.std["audio"])


def test_missing_train_split_or_modality_is_a_clear_error():
    with pytest.raises(ValueError, match="fit on the 'train' split"):
        standardize_splits({"valid": _train()})
    stats = fit_standardization(_split({"text": np.zeros((1, 1, 1))}, {"text": [1]}))
    with pytest.raises(ValueError, match="no statistics for modality 'audio'"):
        stats.apply(_train())


def test_fold_store_fits_on_its_training_rows_only():
    """Subject folds are written as stores whose "train" is the fold's training part
    (tasks.prepare.make_folds); fitting there uses exactly those rows: a fold's test rows never
    shift the statistics."""
    from msaflow.tasks.folds import fold_splits

    rng = np.random.default_rng(1)
    subjects = np.repeat([f"s{i}" for i in range(10)], 3)
    x = rng.normal(0.0, 1.0, (30, 1, 2)).astype(np.float32)
    pooled = _split({"audio": x}, {"audio": [1] * 30})
    fold = fold_splits(subjects.tolist(), None, k=5, seed=0)[0]
    parts = {name: pooled.take(fold[name]) for name in ("train", "valid", "test")}
    poisoned = dict(
        parts,
        test=_split(
            {"audio": np.full((len(fold["test"]), 1, 2), 1e4)}, {"audio": [1] * len(fold["test"])}
        ),
    )
    _, a = standardize_splits(parts)
    _, b = standardize_splits(poisoned)
    np.testing.assert_array_equal(a.mean["audio"], b.mean["audio"])
    np.testing.assert_allclose(a.mean["audio"], x[fold["train"], 0].mean(axis=0), rtol=1e-5)


# --- batches (issue 19) ---------------------------------------------------------------------------


def _tensors() -> dict:
    rng = np.random.default_rng(0)
    split = _split(
        {"text": rng.standard_normal((10, 3, 2)), "audio": rng.standard_normal((10, 3, 1))},
        {"text": [3] * 10, "audio": [1, 2, 3] * 3 + [1]},
    )
    return split_to_tensors(split)


def test_batches_follow_the_seeded_order_and_keep_every_row():
    tensors = _tensors()
    batches = list(iterate_batches(tensors, 4, torch.device("cpu"), shuffle=True, seed=3))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([b["index"] for b in batches]), order)
    assert torch.equal(torch.cat([b["text"] for b in batches]), tensors["text"][order])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_from_pinned_memory_equal_the_cpu_ones():
    tensors = _tensors()
    cpu = list(iterate_batches(tensors, 4, torch.device("cpu"), shuffle=True, seed=3))
    gpu = list(iterate_batches(tensors, 4, torch.device("cuda"), shuffle=True, seed=3))
    for a, b in zip(cpu, gpu, strict=True):
        assert a.keys() == b.keys()
        assert all(b[k].is_cuda and torch.equal(a[k], b[k].cpu()) for k in a)
