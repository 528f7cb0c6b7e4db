from __future__ import annotations

import numpy as np
import pytest

from msaflow.feature_store.extract import Utterance, UtteranceError
from msaflow.feature_store.extract.visual import (
    FACET_COLUMNS,
    OPENFACE_COLUMNS,
    VisualConfig,
    extract_visual_batch,
    pool_to_words,
    read_visual_csv,
)

from .conftest import write_facet, write_openface


def test_openface_csv_with_spaced_header_and_failed_frames(tmp_path):
    path = write_openface(tmp_path / "of.csv", seconds=1.0, fps=30, fail=(0.5, 0.7))
    assert path.read_text().splitlines()[0].startswith("frame, face_id, timestamp")
    frames = read_visual_csv(path)
    assert str(frames["kind"]) == "openface"
    assert frames["features"].shape == (30, len(OPENFACE_COLUMNS)) == (30, 49)
    assert (~frames["valid"]).sum() == 6  # frames 15..20 (0.5 <= t < 0.7)
    words, counts, mode = pool_to_words(
        frames, timings=[("a", 0.0, 0.1), ("b", 0.5, 0.7), ("c", 0.4, 0.6)]
    )
    assert mode == "timings"
    assert words[0] == pytest.approx(np.full(49, 1.0))  # frames 0,1,2 -> mean 1
    assert counts[1] == 0 and not words[1].any()  # only failed frames -> zeros
    assert words[2] == pytest.approx(np.full(49, 13.0))  # frames 12,13,14 valid; 999s masked


def test_facet_csv(tmp_path):
    frames = read_visual_csv(write_facet(tmp_path / "facet.csv", seconds=1.0))
    assert str(frames["kind"]) == "facet" and frames["features"].shape == (30, len(FACET_COLUMNS))
    words, _, mode = pool_to_words(frames, n_words=2)
    assert mode == "equal" and words.shape == (2, 32)
    assert words[0, 0] == pytest.approx(0.1 * np.mean(np.arange(15)), abs=1e-4)


def test_csv_without_expected_columns(tmp_path):
    path = write_openface(tmp_path / "partial.csv", drop=("AU12_r", "pose_Rx"))
    assert read_visual_csv(path)["features"].shape[1] == 47  # auto: the columns the file has
    with pytest.raises(
        UtteranceError, match=r"u7.*partial.csv.*profile openface-full.*missing 2.*AU12_r"
    ):
        read_visual_csv(path, VisualConfig("openface-full"), utterance="u7")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(UtteranceError, match="an OpenFace CSV.*got a header of 2 columns"):
        read_visual_csv(other, utterance="u8")


def test_visual_batch_cache_and_failures(tmp_path):
    good = write_openface(tmp_path / "g.csv", 0.5)
    utts = [
        Utterance("g", "x", None, None, good, 0.0, "train"),
        Utterance("m", "x", None, None, tmp_path / "nope.csv", 0.0, "train"),
    ]
    res = extract_visual_batch(utts, cache_dir=tmp_path / "c")
    assert set(res["entries"]) == {"g"} and res["failures"][0]["id"] == "m"
    assert res["feature_names"] == OPENFACE_COLUMNS
    assert extract_visual_batch(utts, cache_dir=tmp_path / "c")["cache"] == {"hits": 1, "misses": 0}
