"""Real-data check: the offline MiniLM text extractor on real CMU-MOSI transcripts (a small subset).

Writes the first rows of each split of ``../shared/data/mosi_label.csv`` to ``tmp_path`` (the shared
file is never copied into the repo), builds a text-only store with ``msaflow features mosi-text``
and checks it holds the real labels and splits, and 384-d word features whose lengths are the word
counts capped at ``--max-words``. Skips cleanly when the CSV is absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

PER_SPLIT = 20
MAX_WORDS = 12  # small, so some real transcripts are capped


@pytest.fixture
def mosi_subset(mosi_label_csv, tmp_path) -> pd.DataFrame:
    df = pd.read_csv(
        mosi_label_csv, dtype={"video_id": str, "clip_id": str, "text": str}, keep_default_na=False
    )
    sub = df.groupby("mode", sort=False).head(PER_SPLIT).reset_index(drop=True)
    sub.to_csv(tmp_path / "mosi_subset.csv", index=False)
    return sub


@pytest.mark.real_data
@pytest.mark.slow
def test_mosi_text_store_has_real_labels_and_word_features(prefect_harness, mosi_subset, tmp_path):
    from msaflow.commands.features import app
    from msaflow.feature_store import load_split, read_manifest

    out = tmp_path / "mosi-text-subset"
    res = CliRunner().invoke(
        app,
        [
            "mosi-text",
            "--csv",
            str(tmp_path / "mosi_subset.csv"),
            "--out",
            str(out),
            "--max-words",
            str(MAX_WORDS),
        ],
    )
    assert res.exit_code == 0, res.output

    m = read_manifest(out)
    assert m.modalities == {"text": {"dim": 384, "seq_len": MAX_WORDS}}
    assert m.splits == {"train": PER_SPLIT, "valid": PER_SPLIT, "test": PER_SPLIT}
    assert m.label_kind == "regression" and not m.config["failures"]

    words = mosi_subset["text"].str.split().str.len()
    assert (words > MAX_WORDS).any() and (words < MAX_WORDS).any()  # both capped and padded rows
    expected = {
        f"{r.video_id}$_${r.clip_id}": (float(r.label), r.mode, min(n, MAX_WORDS))
        for r, n in zip(mosi_subset.itertuples(), words, strict=True)
    }
    seen = set()
    for split in ("train", "valid", "test"):
        data = load_split(out, split)
        feats, lengths = data.features["text"], data.lengths["text"]
        assert feats.shape == (PER_SPLIT, MAX_WORDS, 384) and np.isfinite(feats).all()
        for i, uid in enumerate(data.ids):
            label, mode, n = expected[uid]
            assert mode == split
            assert data.labels[i] == pytest.approx(label, abs=1e-6)
            assert lengths[i] == n
            assert np.abs(feats[i, :n]).sum(axis=1).min() > 0  # every real word has a vector
            assert not feats[i, n:].any()  # padding past the words is zero
            seen.add(uid)
    assert seen == set(expected)
    # real labels are real: MOSI sentiment in [-3, 3], not all the same sign
    labels = np.array([v[0] for v in expected.values()])
    assert labels.min() >= -3 and labels.max() <= 3 and (labels > 0).any() and (labels < 0).any()
