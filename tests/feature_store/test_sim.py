from __future__ import annotations

import numpy as np
import pytest

from msaflow.feature_store import DataError, load_dataset, synthesize
from msaflow.feature_store.sim import MOSI_ACC7_SHARES


def test_generator_is_deterministic(tmp_path):
    a = synthesize("mosi", tmp_path / "a", seed=3, scale=0.02)
    b = synthesize("mosi", tmp_path / "b", seed=3, scale=0.02)
    c = synthesize("mosi", tmp_path / "c", seed=4, scale=0.02)
    assert a.files["train"]["sha256"] == b.files["train"]["sha256"]
    assert a.files["train"]["sha256"] != c.files["train"]["sha256"]
    assert a.config["params"]["sigma_w"] == 0.7 and a.source == "simulation"


def test_shapes_lengths_and_padding(tiny_sim):
    m, splits = load_dataset(tiny_sim)
    assert m.modalities == {
        "text": {"dim": 768, "seq_len": 50},
        "audio": {"dim": 74, "seq_len": 50},
        "vision": {"dim": 35, "seq_len": 50},
    }
    assert m.splits == {"train": 64, "valid": 16, "test": 34}  # 5% of 1284/229/686, at least 16
    tr = splits["train"]
    ln = tr.lengths["audio"]
    assert ln.min() >= 2 and ln.max() <= 50 and len(set(ln.tolist())) > 5
    i = int(np.argmin(ln))
    assert not tr.features["vision"][i, ln[i] :].any() and tr.features["vision"][i, : ln[i]].any()
    assert "$_$" in tr.ids[0] and {"t", "a", "v", "av", "tav"} <= set(m.oracle)


@pytest.fixture(scope="module")
def full_mosi(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "sim-mosi"
    synthesize("mosi", out, seed=0)
    return out


def test_label_distribution_matches_mosi(full_mosi):
    _, splits = load_dataset(full_mosi, splits=["train"], verify=False)
    y = splits["train"].labels
    bins = np.round(np.clip(y, -3, 3)).astype(int)
    for b, share in MOSI_ACC7_SHARES.items():
        assert abs((bins == b).mean() - share) < 0.035, b
    assert 0.02 < (y == 0).mean() < 0.08 and y.min() >= -3 and y.max() <= 3


def _pooled(split, mods):
    return np.concatenate(
        [split.features[m].sum(1) / np.maximum(split.lengths[m], 1)[:, None] for m in mods], 1
    )


def _ridge_test_mae(s, mods) -> float:
    """Closed-form ridge on mean-pooled features; alpha picked on valid, MAE reported on test."""
    x, y = _pooled(s["train"], mods), s["train"].labels
    mu, ym = x.mean(0), y.mean()
    u, sv, vt = np.linalg.svd(x - mu, full_matrices=False)
    best = (np.inf, None)
    for alpha in np.logspace(-1, 4, 11):
        coef = vt.T @ ((sv / (sv**2 + alpha)) * (u.T @ (y - ym)))
        mae = np.abs((_pooled(s["valid"], mods) - mu) @ coef + ym - s["valid"].labels).mean()
        best = min(best, (mae, coef), key=lambda b: b[0])
    return float(np.abs((_pooled(s["test"], mods) - mu) @ best[1] + ym - s["test"].labels).mean())


def test_planted_imbalance_holds(full_mosi):
    """Text-only clearly beats audio- and vision-only; all three beat text-only."""
    _, s = load_dataset(full_mosi, verify=False)
    mae = {
        key: _ridge_test_mae(s, mods)
        for key, mods in {
            "t": ["text"],
            "a": ["audio"],
            "v": ["vision"],
            "tav": ["text", "audio", "vision"],
        }.items()
    }
    assert mae["t"] < 0.8 * min(mae["a"], mae["v"]), mae
    assert mae["tav"] < 0.9 * mae["t"], mae


def test_other_profiles(tmp_path):
    emo = synthesize("iemocap", tmp_path / "emo", scale=0.05)
    assert (
        emo.label_kind == "classification" and emo.num_classes == 4 and emo.data_kind == "emotion"
    )
    _, s = load_dataset(tmp_path / "emo", splits=["train"])
    assert set(s["train"].class_labels.tolist()) == {0, 1, 2, 3}
    dep = synthesize("cmdc", tmp_path / "dep", scale=1.0)
    _, d = load_dataset(tmp_path / "dep")
    subjects = {k: set(v.subjects.tolist()) for k, v in d.items()}
    assert not subjects["train"] & subjects["test"] and not subjects["train"] & subjects["valid"]
    assert (
        dep.splits["train"] % 12 == 0
        and d["test"].labels.min() >= 0
        and d["test"].labels.max() <= 27
    )


def test_resynthesize_is_a_noop_and_bad_args(tmp_path):
    a = synthesize("mosi", tmp_path / "a", scale=0.02)
    stamp = (tmp_path / "a" / "train.parquet").stat().st_mtime_ns
    assert synthesize("mosi", tmp_path / "a", scale=0.02).content_hash == a.content_hash
    assert (tmp_path / "a" / "train.parquet").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="profile"):
        synthesize("nope", tmp_path / "b")
    with pytest.raises(DataError, match="scale"):
        synthesize("mosi", tmp_path / "b", scale=2)
