from __future__ import annotations

import json

import numpy as np
import pytest

from msaflow.feature_store import (
    DataError,
    SplitData,
    load_dataset,
    load_split,
    load_split_shared,
    read_manifest,
    validate_dataset,
    write_dataset,
)


def _split(n: int, t: int = 4, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    return SplitData(
        ids=np.array([f"v{seed}$_${i}" for i in range(n)]),
        labels=rng.uniform(-3, 3, n).astype(np.float32),
        features={
            "text": rng.standard_normal((n, t, 3)).astype(np.float32),
            "audio": rng.standard_normal((n, t, 2)).astype(np.float32),
        },
        lengths={"text": np.full(n, t), "audio": np.arange(n) % (t + 1)},
    )


def test_round_trip_and_manifest(tmp_path):
    splits = {"train": _split(7), "valid": _split(3, seed=1), "test": _split(2, seed=2)}
    m = write_dataset(tmp_path / "s", splits, name="toy", source="unit")
    m2, loaded = load_dataset(tmp_path / "s")
    assert m2.content_hash == m.content_hash and m2.splits == {"train": 7, "valid": 3, "test": 2}
    assert m.modalities == {"text": {"dim": 3, "seq_len": 4}, "audio": {"dim": 2, "seq_len": 4}}
    assert m.input_spec() == {
        "text_dim": 3,
        "audio_dim": 2,
        "vision_dim": 0,
        "seq_len": 4,
        "head": "regression",
        "num_classes": 1,
    }
    for name, s in splits.items():
        got = loaded[name]
        np.testing.assert_array_equal(got.features["text"], s.features["text"])
        np.testing.assert_array_equal(got.lengths["audio"], s.lengths["audio"])
        np.testing.assert_array_equal(got.labels, s.labels)
        assert got.ids.tolist() == s.ids.tolist()


def test_many_row_groups_load_in_order(tmp_path, monkeypatch):
    import msaflow.feature_store.parquet_io as parquet_io

    monkeypatch.setattr(parquet_io, "ROW_GROUP_BYTES", 100)  # forces one row per group
    s = _split(9)
    write_dataset(tmp_path / "s", {"train": s}, name="toy", source="unit")
    np.testing.assert_array_equal(
        load_split(tmp_path / "s", "train").features["audio"], s.features["audio"]
    )


def test_checksum_mismatch_is_an_error(tmp_path):
    write_dataset(tmp_path / "s", {"train": _split(5)}, name="toy", source="unit")
    path = tmp_path / "s" / "train.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # same size, changed content
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="crc32") as info:
        load_split(tmp_path / "s", "train")
    assert info.value.path == path
    with pytest.raises(DataError, match="sha256"):
        validate_dataset(tmp_path / "s")


def test_shared_load_is_reused_until_the_file_changes(tmp_path):
    write_dataset(tmp_path / "s", {"train": _split(5)}, name="toy", source="unit")
    first = load_split_shared(tmp_path / "s", "train")
    assert load_split_shared(tmp_path / "s", "train") is first  # one load per process
    path = tmp_path / "s" / "train.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))  # changed after writing: read and checked again, not served stale
    with pytest.raises(DataError, match="crc32"):
        load_split_shared(tmp_path / "s", "train")


@pytest.mark.parametrize(
    "bad, field",
    [
        (lambda s: s.__setattr__("labels", np.full(len(s), np.nan, np.float32)), "label"),
        (lambda s: s.__setattr__("labels", np.full(len(s), 5.0, np.float32)), "label"),
        (lambda s: s.features.__setitem__("text", s.features["text"][:, :, 0]), "text"),
        (lambda s: s.features.__setitem__("text", s.features["text"][:-1]), "text"),
    ],
)
def test_bad_splits_leave_the_old_store(tmp_path, bad, field):
    out = tmp_path / "s"
    write_dataset(out, {"train": _split(5)}, name="old", source="unit")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    s = _split(4)
    bad(s)
    with pytest.raises(DataError) as info:
        write_dataset(out, {"train": s}, name="new", source="unit")
    assert field in info.value.field and str(out) in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary left behind


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(DataError, match="non-empty"):
        write_dataset(
            tmp_path / "s", {"train": _split(3), "test": _split(0)}, name="x", source="unit"
        )
    assert not (tmp_path / "s").exists()


def test_crash_while_writing_keeps_old_store(tmp_path, monkeypatch):
    import msaflow.feature_store.parquet_io as parquet_io

    out = tmp_path / "s"
    write_dataset(out, {"train": _split(5)}, name="old", source="unit")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(parquet_io, "_replace_dir", boom)
    with pytest.raises(OSError):
        write_dataset(out, {"train": _split(6)}, name="new", source="unit")
    assert read_manifest(out).name == "old" and len(load_split(out, "train")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_missing_manifest_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(DataError, match="source"):
        read_manifest(tmp_path)


def test_the_manifest_keeps_its_task_field_on_disk(tmp_path):
    """``Manifest.data_kind`` is the manifest's ``task`` field: written and read under that name,
    so old stores read and new ones stay byte-compatible."""
    splits = {"train": _split(7), "valid": _split(3, seed=1), "test": _split(2, seed=2)}
    m = write_dataset(tmp_path / "s", splits, name="toy", source="unit", data_kind="depression")
    raw = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert raw["task"] == "depression" and "data_kind" not in raw
    assert read_manifest(tmp_path / "s").data_kind == "depression" == m.data_kind
    assert m.to_dict()["task"] == "depression"
