"""A manifest may point at any readable file: extraction errors name the file, never quote it; bad
labels fail their row, not the run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from msaflow.feature_store.extract import read_extraction_manifest
from msaflow.feature_store.extract.audio import AudioConfig, extract_audio_batch
from msaflow.feature_store.extract.visual import extract_visual_batch

from .conftest import write_openface

SECRET = "s3cr3t-first-line"


def _secret_files(tmp_path: Path) -> list[Path]:
    text = tmp_path / "notes.txt"
    text.write_text(f"{SECRET}\nsecond {SECRET} line\n")
    csvish = tmp_path / "creds.csv"
    csvish.write_text(f"user,{SECRET}\nroot,{SECRET}2\n")
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode() + b"\x00\x01,\n" * 3)
    paths = [text, csvish, binary]
    host = Path("/etc/hostname")
    if host.is_file() and host.read_text().strip():
        paths.append(host)
    return paths


def test_errors_never_echo_file_contents(tmp_path):
    secrets = _secret_files(tmp_path)
    hostname = (
        Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").is_file() else SECRET
    )
    face = write_openface(tmp_path / "ok.csv", 0.3)
    rows, audio_rows = [], []
    for i, p in enumerate(secrets):
        rows.append({"id": f"v{i}", "visual_path": str(p), "label": 0, "split": "train"})
        rows.append(
            {
                "id": f"t{i}",
                "visual_path": str(face),
                "timings_path": str(p),
                "label": 0,
                "split": "train",
            }
        )
        # audio in a manifest of its own: no good WAV, so librosa (slow to warm up) never runs
        audio_rows.append({"id": f"a{i}", "audio_path": str(p), "label": 0, "split": "train"})
    # Cells of the manifest itself that are wrong are described, not quoted.
    rows.append(
        {
            "id": "w",
            "visual_path": str(face),
            "label": 0,
            "split": "train",
            "words": json.dumps([[SECRET, SECRET, 1]]),
        }
    )
    rows.append({"id": "l", "visual_path": str(face), "label": SECRET, "split": "train"})
    rows.append({"id": "s", "visual_path": str(face), "label": 0, "split": SECRET})
    manifest, audio_manifest = tmp_path / "m.csv", tmp_path / "audio.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    pd.DataFrame(audio_rows).to_csv(audio_manifest, index=False)

    utts, _, failures = read_extraction_manifest(manifest)
    failures += extract_visual_batch(utts, cache_dir=tmp_path / "c")["failures"]
    audio_utts, _, more = read_extraction_manifest(audio_manifest)
    failures += (
        more
        + extract_audio_batch(audio_utts, AudioConfig(f0="yin"), cache_dir=tmp_path / "c")[
            "failures"
        ]
    )
    by_id = {f["id"]: f["error"] for f in failures}
    expected = {f"{k}{i}" for k in "vat" for i in range(len(secrets))} | {"w", "l", "s"}
    assert expected <= set(by_id)
    for uid, error in by_id.items():
        assert SECRET not in error and hostname not in error.replace("/etc/hostname", ""), (
            uid,
            error,
        )
        assert "\n" not in error
    for i, p in enumerate(secrets):  # each names its file
        assert all(str(p) in by_id[f"{k}{i}"] for k in "vat")
    assert "got a header of" in by_id["v0"] and "label" in by_id["l"] and "split" in by_id["s"]


@pytest.mark.parametrize(
    "label, why",
    [
        ("nan", "NaN"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("3.5", "outside"),
        ("-7", "outside"),
        ("good", "not a number"),
        ("", "empty"),
    ],
)
def test_bad_label_fails_its_row_only(tmp_path, label, why):
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        [
            {"id": "ok", "text": "fine", "label": "1.5", "split": "train"},
            {"id": "bad", "text": "fine", "label": label, "split": "train"},
        ]
    ).to_csv(manifest, index=False)
    utts, _, failures = read_extraction_manifest(manifest)
    assert [u.id for u in utts] == ["ok"]
    assert [f["id"] for f in failures] == ["bad"]
    assert (
        "label: expected a finite number in [-3, 3]" in failures[0]["error"]
        and why in failures[0]["error"]
    )
    utts, _, failures = read_extraction_manifest(
        manifest, label_range=(-10, 10)
    )  # the store's own range
    assert ([u.id for u in utts] == ["ok", "bad"]) == (why == "outside")
