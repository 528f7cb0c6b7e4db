"""End-to-end: the ``features`` flow on 4 utterances (3 good, 1 bad) under the Prefect harness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import write_openface, write_tone

fs = pytest.importorskip("msaflow.feature_store")
if not hasattr(fs, "write_dataset"):
    pytest.skip("feature_store.write_dataset is not there yet", allow_module_level=True)


def _manifest(tmp_path, rows) -> str:
    import pandas as pd

    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "wav").mkdir()
    (tmp_path / "face").mkdir()
    rows = []
    for i, (text, label, split) in enumerate(
        [
            ("it was really good", 2.0, "train"),
            ("i did not like it", -1.5, "train"),
            ("okay", 0.2, "test"),
            ("missing audio here", 1.0, "valid"),
        ]
    ):
        seconds = 0.4 + 0.1 * i
        if i != 3:
            write_tone(tmp_path / "wav" / f"{i}.wav", seconds, f0=150 + 30 * i)
        write_openface(tmp_path / "face" / f"{i}.csv", seconds, fail=(0.0, 0.05))
        words = ""
        if i == 0:  # word timings for one utterance, JSON [[word, start_s, end_s], ...]
            words = json.dumps(
                [["it", 0.0, 0.1], ["was", 0.1, 0.2], ["really", 0.2, 0.3], ["good", 0.3, 0.4]]
            )
        rows.append(
            {
                "id": f"u{i}",
                "text": text,
                "audio_path": f"wav/{i}.wav",
                "visual_path": f"face/{i}.csv",
                "label": label,
                "split": split,
                "words": words,
            }
        )
    return rows


def test_features_flow_end_to_end(prefect_harness, tmp_path, inputs):
    from msaflow.feature_store import load_split, read_manifest
    from msaflow.flows.features import features

    manifest = _manifest(tmp_path, inputs)
    kw = {
        "manifest": manifest,
        "max_words": 8,
        "f0": "yin",
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
    }
    res = features(out=str(tmp_path / "store"), **kw)
    assert res["written"] == 3 and res["splits"] == {"train": 2, "test": 1}
    assert [f["id"] for f in res["failures"]] == ["u3"] and "existing WAV" in res["failures"][0][
        "error"
    ]
    assert res["dims"] == {"text": 384, "audio": 37, "vision": 49}
    train = load_split(tmp_path / "store", "train")
    assert train.features["text"].shape == (2, 8, 384) and train.features["audio"].shape == (
        2,
        8,
        37,
    )
    assert train.lengths["vision"].tolist() == [4, 5]
    assert not train.features["audio"][0, 4:].any()  # padding past the 4 words
    m = read_manifest(tmp_path / "store")
    assert [f["id"] for f in m.config["failures"]] == ["u3"]
    assert m.config["vision"]["feature_names"][0] == "gaze_0_x"

    again = features(out=str(tmp_path / "store2"), **kw)  # re-run: nothing recomputed
    assert all(c["misses"] == 0 for c in again["cache"].values())
    write_tone(tmp_path / "wav" / "1.wav", 0.5, f0=333)  # change one file -> one miss
    third = features(out=str(tmp_path / "store3"), **kw)
    assert third["cache"]["audio"]["misses"] == 1 and third["cache"]["text"]["misses"] == 0
    assert np.isfinite(load_split(tmp_path / "store3", "train").features["audio"]).all()


def test_text_only_manifest_and_all_failing(prefect_harness, tmp_path):
    from msaflow.feature_store import DataError, load_split
    from msaflow.flows.features import features

    ok = _manifest(
        tmp_path,
        [
            {"id": "a", "text": "good film", "label": 1.0, "split": "train"},
            {"id": "b", "text": "bad film", "label": -1.0, "split": "valid"},
        ],
    )
    res = features(
        manifest=ok, out=str(tmp_path / "t"), cache_dir=str(tmp_path / "c"), progress=False
    )
    assert res["dims"] == {"text": 384}
    assert set(load_split(tmp_path / "t", "train").features) == {"text"}

    (tmp_path / "bad").mkdir()
    bad = _manifest(
        tmp_path / "bad",
        [{"id": "x", "text": "", "audio_path": "no.wav", "label": 0, "split": "train"}],
    )
    with pytest.raises(DataError, match="at least one utterance"):
        features(
            manifest=bad, out=str(tmp_path / "never"), cache_dir=str(tmp_path / "c"), progress=False
        )
    assert not (tmp_path / "never").exists()


def test_bad_labels_are_reported_and_skipped(prefect_harness, tmp_path):
    """One NaN/inf/out-of-range label used to abort the whole write (write_dataset refuses it)."""
    from msaflow.feature_store import load_split, read_manifest
    from msaflow.flows.features import features

    (tmp_path / "face").mkdir()
    rows = []
    for i, (label, split) in enumerate(
        [
            (1.0, "train"),
            ("nan", "train"),
            ("inf", "train"),
            (9.0, "train"),
            (-0.5, "train"),
            (0.3, "test"),
        ]
    ):
        write_openface(tmp_path / "face" / f"{i}.csv", 0.3)
        rows.append({"id": f"u{i}", "visual_path": f"face/{i}.csv", "label": label, "split": split})
    res = features(
        manifest=_manifest(tmp_path, rows),
        out=str(tmp_path / "store"),
        cache_dir=str(tmp_path / "c"),
        progress=False,
    )
    assert res["splits"] == {"train": 2, "test": 1}
    assert sorted(f["id"] for f in res["failures"]) == ["u1", "u2", "u3"]
    assert all("label: expected a finite number in [-3, 3]" in f["error"] for f in res["failures"])
    assert load_split(tmp_path / "store", "train").ids.tolist() == ["u0", "u4"]
    assert [f["id"] for f in read_manifest(tmp_path / "store").config["failures"]] == [
        "u1",
        "u2",
        "u3",
    ]


def test_store_manifest_records_visual_columns_and_never_file_contents(prefect_harness, tmp_path):
    from msaflow.feature_store import read_manifest
    from msaflow.feature_store.extract.visual import AU_COLUMNS
    from msaflow.flows.features import features

    secret = tmp_path / "diary.txt"
    secret.write_text("my-private-first-line\n")
    rows = [
        {
            "id": f"u{i}",
            "visual_path": str(write_openface(tmp_path / f"{i}.csv", 0.3)),
            "label": 0.5,
            "split": "train",
        }
        for i in range(2)
    ]
    rows += [
        {"id": "host", "visual_path": "/etc/hostname", "label": 0, "split": "train"},
        {"id": "diary", "visual_path": str(secret), "label": 0, "split": "train"},
    ]
    res = features(
        manifest=_manifest(tmp_path, rows),
        out=str(tmp_path / "store"),
        visual_kind="openface-aus",
        cache_dir=str(tmp_path / "c"),
        progress=False,
    )
    assert res["dims"] == {"vision": 35}
    vision = read_manifest(tmp_path / "store").config["vision"]
    assert vision["profile"] == "openface-aus" and vision["feature_names"] == AU_COLUMNS
    assert vision["kind"] == "openface" and "confidence" in vision["face_selection"]
    text = (tmp_path / "store" / "manifest.json").read_text()
    assert "diary" in text and "my-private-first-line" not in text
    host = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").is_file() else ""
    if len(host) >= 4:  # a shorter name could occur by chance
        failures = json.dumps(read_manifest(tmp_path / "store").config["failures"]).replace(
            "/etc/hostname", ""
        )
        assert host not in failures
