from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from feature_store.extract import Utterance, UtteranceError
from feature_store.extract.audio import (
    FEATURE_NAMES,
    AudioConfig,
    extract_audio_batch,
    frame_features,
    load_wav,
    pool_to_words,
)

from .conftest import write_tone

IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def test_tone_features_yin(tmp_path):
    wav = write_tone(tmp_path / "t.wav", seconds=0.6, f0=220, sr=44100, silence=0.4, channels=2)
    y = load_wav(wav, 16000)
    assert y.ndim == 1 and len(y) == pytest.approx(16000, abs=2)          # resampled, mono
    frames = frame_features(y, AudioConfig(f0="yin"))
    assert frames.shape == (1 + len(y) // 160, 37) and frames.dtype == np.float32
    tone, silence = frames[10:50], frames[70:95]
    assert np.median(tone[:, IDX["f0_hz"]]) == pytest.approx(220, rel=0.03)
    assert tone[:, IDX["vuv"]].mean() > 0.9 and silence[:, IDX["vuv"]].max() == 0
    assert np.median(tone[:, IDX["h1h2_db"]]) == pytest.approx(6.0, abs=1.5)   # 0.5 vs 0.25 amplitude
    assert np.median(tone[:, IDX["hnr_db"]]) > 15
    assert tone[:, IDX["log_energy_db"]].mean() > silence[:, IDX["log_energy_db"]].mean() + 30
    assert np.isfinite(frames).all()


def test_pyin_and_word_pooling(tone_wav):
    y = load_wav(tone_wav)
    frames = frame_features(y, AudioConfig(f0="pyin"))
    assert np.median(frames[10:50, IDX["f0_hz"]]) == pytest.approx(220, rel=0.03)
    words, mode = pool_to_words(frames, 1.0, timings=[("tone", 0.1, 0.5), ("quiet", 0.7, 0.95)])
    assert mode == "timings" and words.shape == (2, 37)
    assert words[0, IDX["f0_hz"]] == pytest.approx(220, rel=0.03)   # averaged over voiced frames
    assert words[1, IDX["f0_hz"]] == 0 and words[1, IDX["vuv"]] == 0
    eq, mode = pool_to_words(frames, 1.0, n_words=4)
    assert mode == "equal" and eq.shape == (4, 37)
    win, mode = pool_to_words(frames, 1.0)
    assert mode == "windows" and win.shape == (10, 37)


def test_bad_wav_and_missing_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    with pytest.raises(UtteranceError, match="utt-9.*readable WAV"):
        load_wav(bad, utterance="utt-9")
    utts = [Utterance("gone", "x", None, tmp_path / "missing.wav", None, 0.0, "train"),
            Utterance("bad", "x", None, bad, None, 0.0, "train"),
            Utterance("ok", "x", None, write_tone(tmp_path / "ok.wav", 0.3), None, 0.0, "train")]
    res = extract_audio_batch(utts, AudioConfig(f0="yin"), cache_dir=tmp_path / "cache")
    assert set(res["entries"]) == {"ok"}
    errors = {f["id"]: f["error"] for f in res["failures"]}
    assert "existing WAV" in errors["gone"] and "readable WAV" in errors["bad"]


def test_audio_cache_hits_on_rerun(tmp_path):
    wavs = [write_tone(tmp_path / f"{i}.wav", 0.3, f0=150 + 20 * i) for i in range(3)]
    utts = [Utterance(str(i), "a b", None, w, None, 0.0, "train") for i, w in enumerate(wavs)]
    cfg = AudioConfig(f0="yin")
    first = extract_audio_batch(utts, cfg, cache_dir=tmp_path / "c")
    assert first["cache"] == {"hits": 0, "misses": 3}
    assert extract_audio_batch(utts, cfg, cache_dir=tmp_path / "c")["cache"] == {"hits": 3, "misses": 0}
    write_tone(wavs[1], 0.3, f0=300)                                           # content changes
    assert extract_audio_batch(utts, cfg, cache_dir=tmp_path / "c")["cache"] == {"hits": 2, "misses": 1}
    assert extract_audio_batch(utts, AudioConfig(f0="pyin"), cache_dir=tmp_path / "c")["cache"]["misses"] == 3


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_speech_from_espeak(tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "this movie was really good"], check=True, timeout=30)
    y = load_wav(wav)
    frames = frame_features(y, AudioConfig(f0="yin"))
    voiced = frames[:, IDX["vuv"]] > 0.5
    assert 0.2 < voiced.mean() < 0.95                                 # speech: voiced and unvoiced parts
    assert 60 < np.median(frames[voiced, IDX["f0_hz"]]) < 300
