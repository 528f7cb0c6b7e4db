from __future__ import annotations

import numpy as np
import pytest
import torch

from msaflow.feature_store.extract import DataError, Utterance
from msaflow.feature_store.extract.text import (
    TextConfig,
    TextEncoder,
    extract_text_batch,
    mosi_transcripts_manifest,
    resolve_model,
)


def test_word_pooling_matches_manual_mean(minilm):
    words = [["hello", "world"], ["an", "unbelievably", "tokenized", "sentence"]]
    out = minilm.encode(words)
    assert [o.shape for o in out] == [(2, 384), (4, 384)] and out[0].dtype == np.float32
    enc = minilm.tokenizer(words[1], is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        states = minilm.model(**enc).last_hidden_state[0]
    ids = enc.word_ids(0)
    for w in range(4):
        toks = [i for i, x in enumerate(ids) if x == w]
        np.testing.assert_allclose(out[1][w], states[toks].mean(0).numpy(), atol=1e-4)
    assert sum(x == 2 for x in ids if x is not None) > 1  # "tokenized" really has sub-tokens


def test_max_words_and_token_ids(minilm):
    enc = TextEncoder.__new__(TextEncoder)
    enc.__dict__.update(minilm.__dict__)
    enc.config = TextConfig(max_words=3)
    assert enc.encode([["a", "b", "c", "d", "e"]])[0].shape == (3, 384)
    ids = minilm.token_ids([["hello", "world"]], 8)
    assert ids.shape == (1, 3, 8) and ids[0, 1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_offline_hub_name_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("bert-base-uncased") == ("bert-base-uncased", True)
    with pytest.raises(DataError, match="offline"):
        TextEncoder(TextConfig(model="surely-not/a-cached-model-xyz"))
    with pytest.raises(DataError, match="local model folder"):
        resolve_model("./no/such/model")


def test_text_cache_and_empty_transcript(tmp_path, minilm):
    utts = [
        Utterance(str(i), t, None, None, None, 0.0, "train")
        for i, t in enumerate(["it was good", "not great at all", "meh", "   "])
    ]
    first = extract_text_batch(utts, cache_dir=tmp_path)
    assert first["cache"] == {"hits": 0, "misses": 3} and first["dim"] == 384
    assert [f["id"] for f in first["failures"]] == ["3"] and "at least one word" in first[
        "failures"
    ][0]["error"]
    assert extract_text_batch(utts, cache_dir=tmp_path)["cache"] == {"hits": 3, "misses": 0}
    utts[1].text = "not great at all, honestly"
    assert extract_text_batch(utts, cache_dir=tmp_path)["cache"] == {"hits": 2, "misses": 1}
    utts[0].words = [
        ("it", 0.0, 0.1),
        ("was", 0.1, 0.2),
        ("good", 0.2, 0.5),
    ]  # timings are content too
    assert extract_text_batch(utts, cache_dir=tmp_path)["cache"]["misses"] == 1


@pytest.mark.real_data
def test_real_mosi_transcripts_first_rows(mosi_label_csv, tmp_path, minilm):
    from msaflow.feature_store.extract import read_extraction_manifest

    manifest = mosi_transcripts_manifest(mosi_label_csv, tmp_path / "m.csv", limit=20)
    utts, present, failures = read_extraction_manifest(manifest)
    assert (
        len(utts) == 20
        and present == {"text": True, "audio": False, "vision": False}
        and not failures
    )
    assert utts[0].id == "03bSnISJMiM$_$1" and utts[0].split == "train"
    res = extract_text_batch(utts, cache_dir=tmp_path / "c")
    assert len(res["entries"]) == 20 and not res["failures"]
    emb = np.load(res["entries"][utts[1].id])["words"]
    assert emb.shape == (min(len(utts[1].word_list()), 50), 384) and np.isfinite(emb).all()


def test_the_encoder_runs_on_an_explicit_cpu_with_the_same_features(minilm, tmp_path):
    """``device`` is honoured and recorded; it changes neither the features nor the cache key."""
    from msaflow.feature_store.extract.text import cache_config

    enc = TextEncoder(TextConfig(max_words=50, device="cpu"))
    assert enc.device == torch.device("cpu")
    assert {p.device for p in enc.model.parameters()} == {torch.device("cpu")}
    words = [["hello", "world"], ["an", "unbelievably", "tokenized", "sentence"]]
    for a, b in zip(enc.encode(words), minilm.encode(words), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cache_config(TextConfig(device="cpu")) == cache_config(TextConfig())
    utts = [Utterance("0", "it was good", None, None, None, 0.0, "train")]
    assert extract_text_batch(utts, TextConfig(device="cpu"), cache_dir=tmp_path)["device"] == "cpu"
    cached = extract_text_batch(utts, TextConfig(), cache_dir=tmp_path)  # same entry: no encoder
    assert cached["cache"] == {"hits": 1, "misses": 0} and cached["device"] is None


def test_the_encoder_goes_to_cuda_when_available(monkeypatch):
    if torch.cuda.is_available():
        assert TextEncoder(TextConfig()).device.type == "cuda"
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # faked: no GPU here
    # this CPU build of torch cannot move the model: the error proves that it tried
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        TextEncoder(TextConfig())
