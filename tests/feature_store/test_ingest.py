from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from msaflow.feature_store import DataError, ingest, load_dataset, read_manifest


def test_mmsa_aligned_round_trip(tmp_path, mmsa_pickle):
    path, data = mmsa_pickle()
    m = ingest("mmsa", path, tmp_path / "store")
    _, splits = load_dataset(tmp_path / "store")
    assert m.modalities == {
        "text": {"dim": 8, "seq_len": 6},
        "audio": {"dim": 5, "seq_len": 6},
        "vision": {"dim": 4, "seq_len": 6},
    }
    for s in ("train", "valid", "test"):
        for mod in ("text", "audio", "vision"):
            np.testing.assert_array_equal(splits[s].features[mod], data[s][mod].astype(np.float32))
        np.testing.assert_array_equal(splits[s].labels, data[s]["regression_labels"])
        assert splits[s].lengths["text"].tolist() == [4] * len(splits[s])  # from text_bert's mask
        assert splits[s].ids.tolist() == data[s]["id"].tolist()
        assert splits[s].video_ids[0] == "03bSnISJMiM"
    assert m.source_sha256 and m.cleaning["nonfinite"]["train"]["audio"] == 0


def test_mmsa_unaligned_uses_lengths_not_zeros(tmp_path, mmsa_pickle):
    path, data = mmsa_pickle(aligned=False, name="unaligned_50.pkl")
    m = ingest("mmsa", path, tmp_path / "store")
    _, splits = load_dataset(tmp_path / "store")
    a = splits["train"].features["audio"]
    ln = data["train"]["audio_lengths"]
    assert splits["train"].lengths["audio"].tolist() == ln.tolist()
    for i, n in enumerate(ln):
        np.testing.assert_array_equal(a[i, :n], data["train"]["audio"][i, :n].astype(np.float32))
        assert not a[i, n:].any()  # garbage past the length is zeroed
    assert m.cleaning["frames_zeroed_past_length"]["train"] > 0


def test_mult_round_trip(tmp_path, mult_pickle):
    path, data = mult_pickle
    ingest("mult", path, tmp_path / "store")
    _, splits = load_dataset(tmp_path / "store")
    np.testing.assert_array_equal(splits["valid"].features["text"], data["valid"]["text"])
    np.testing.assert_array_equal(splits["valid"].labels, data["valid"]["labels"].reshape(-1))
    assert (
        splits["train"].ids[4] == "vid1$_$1"
        and splits["train"].lengths["vision"].tolist() == [7] * 10
    )


def test_nonfinite_counted_and_replaced(tmp_path, mmsa_pickle):
    def poison(d):
        d["train"]["audio"][0, 0, :2] = [np.nan, -np.inf]

    path, _ = mmsa_pickle(mutate=poison)
    m = ingest("mmsa", path, tmp_path / "store")
    assert m.cleaning["nonfinite"]["train"]["audio"] == 2
    _, splits = load_dataset(tmp_path / "store")
    assert np.isfinite(splits["train"].features["audio"]).all()
    with pytest.raises(DataError, match="train.audio"):
        ingest("mmsa", path, tmp_path / "strict", nonfinite="error")


def test_reingest_is_a_noop(tmp_path, mmsa_pickle):
    path, _ = mmsa_pickle()
    ingest("mmsa", path, tmp_path / "store")
    stamp = os.stat(tmp_path / "store" / "train.parquet").st_mtime_ns
    ingest("mmsa", path, tmp_path / "store")
    assert os.stat(tmp_path / "store" / "train.parquet").st_mtime_ns == stamp


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _expect_error_and_untouched(tmp_path, path, fmt, field):
    out = tmp_path / "store"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("old")
    with pytest.raises(DataError) as info:
        ingest(fmt, path, out)
    assert field in f"{info.value.field} {info.value.expected}", str(info.value)
    assert str(path) in str(info.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    return info.value


def test_truncated_pickle(tmp_path, mmsa_pickle):
    path, _ = mmsa_pickle()
    path.write_bytes(path.read_bytes()[:500])
    _expect_error_and_untouched(tmp_path, path, "mmsa", "pickle")


def test_code_running_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": _Evil()}))
    err = _expect_error_and_untouched(tmp_path, path, "mmsa", "pickle")
    assert "posix.system" in str(err) or "os.system" in str(err)
    assert not (tmp_path / "PWNED").exists()


def test_other_object_types_are_refused(tmp_path):
    import datetime

    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"train": {"when": datetime.date(2020, 1, 1)}}))
    err = _expect_error_and_untouched(tmp_path, path, "mmsa", "pickle")
    assert "datetime.date" in str(err)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("valid"), "valid"),
        (lambda d: d["train"].pop("vision"), "train.vision"),
        (lambda d: d["test"].__setitem__("audio", d["test"]["audio"][:-1]), "test.audio"),
        (lambda d: d["train"].__setitem__("text", d["train"]["text"][:, 0]), "rank-3"),
        (
            lambda d: d["train"].__setitem__(
                "regression_labels", d["train"]["regression_labels"] * 0 + 9
            ),
            "label",
        ),
        (lambda d: d["valid"]["regression_labels"].__setitem__(0, np.nan), "label"),
        (lambda d: d.__setitem__("test", {k: v[:0] for k, v in d["test"].items()}), "non-empty"),
    ],
)
def test_bad_mmsa_inputs(tmp_path, mmsa_pickle, mutate, field):
    path, _ = mmsa_pickle(mutate=mutate)
    _expect_error_and_untouched(tmp_path, path, "mmsa", field)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="format"):
        ingest("csv", tmp_path / "x.pkl", tmp_path / "out")
    with pytest.raises(DataError, match="existing pickle"):
        ingest("mmsa", tmp_path / "x.pkl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert read_manifest  # public API stays importable


def test_default_name_includes_the_parent_folder(tmp_path, mmsa_pickle):
    """MMSA ships aligned_50.pkl for MOSI, MOSEI and SIMS alike: the folder tells them apart."""
    path, _ = mmsa_pickle()
    src = tmp_path / "MOSI" / "aligned_50.pkl"
    src.parent.mkdir()
    path.rename(src)
    assert ingest("mmsa", src, tmp_path / "a").name == "mosi-aligned_50"
    assert ingest("mmsa", src, tmp_path / "b", name="mine").name == "mine"
    assert read_manifest(tmp_path / "a").name == "mosi-aligned_50"


def test_non_numeric_features_are_a_data_error(tmp_path, mmsa_pickle):
    path, _ = mmsa_pickle(
        mutate=lambda d: d["train"].__setitem__("audio", np.full((12, 6, 5), "x"))
    )
    _expect_error_and_untouched(tmp_path, path, "mmsa", "train.audio")
