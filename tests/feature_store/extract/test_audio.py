from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from msaflow.feature_store.extract import Utterance, UtteranceError
from msaflow.feature_store.extract.audio import (
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
    assert y.ndim == 1 and len(y) == pytest.approx(16000, abs=2)  # resampled, mono
    frames = frame_features(y, AudioConfig(f0="yin"))
    assert frames.shape == (1 + len(y) // 160, 37) and frames.dtype == np.float32
    tone, silence = frames[10:50], frames[70:95]
    assert np.median(tone[:, IDX["f0_hz"]]) == pytest.approx(220, rel=0.03)
    assert tone[:, IDX["vuv"]].mean() > 0.9 and silence[:, IDX["vuv"]].max() == 0
    assert np.median(tone[:, IDX["h1h2_db"]]) == pytest.approx(
        6.0, abs=1.5
    )  # 0.5 vs 0.25 amplitude
    assert np.median(tone[:, IDX["hnr_db"]]) > 15
    assert tone[:, IDX["log_energy_db"]].mean() > silence[:, IDX["log_energy_db"]].mean() + 30
    assert np.isfinite(frames).all()


def test_pyin_and_word_pooling(tone_wav):
    y = load_wav(tone_wav)
    frames = frame_features(y, AudioConfig(f0="pyin"))
    assert np.median(frames[10:50, IDX["f0_hz"]]) == pytest.approx(220, rel=0.03)
    words, mode = pool_to_words(frames, 1.0, timings=[("tone", 0.1, 0.5), ("quiet", 0.7, 0.95)])
    assert mode == "timings" and words.shape == (2, 37)
    assert words[0, IDX["f0_hz"]] == pytest.approx(220, rel=0.03)  # averaged over voiced frames
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
    utts = [
        Utterance("gone", "x", None, tmp_path / "missing.wav", None, 0.0, "train"),
        Utterance("bad", "x", None, bad, None, 0.0, "train"),
        Utterance("ok", "x", None, write_tone(tmp_path / "ok.wav", 0.3), None, 0.0, "train"),
    ]
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
    assert extract_audio_batch(utts, cfg, cache_dir=tmp_path / "c")["cache"] == {
        "hits": 3,
        "misses": 0,
    }
    write_tone(wavs[1], 0.3, f0=300)  # content changes
    assert extract_audio_batch(utts, cfg, cache_dir=tmp_path / "c")["cache"] == {
        "hits": 2,
        "misses": 1,
    }
    assert (
        extract_audio_batch(utts, AudioConfig(f0="pyin"), cache_dir=tmp_path / "c")["cache"][
            "misses"
        ]
        == 3
    )


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_speech_from_espeak(tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(wav), "this movie was really good"], check=True, timeout=30
    )
    y = load_wav(wav)
    frames = frame_features(y, AudioConfig(f0="yin"))
    voiced = frames[:, IDX["vuv"]] > 0.5
    assert 0.2 < voiced.mean() < 0.95  # speech: voiced and unvoiced parts
    assert 60 < np.median(frames[voiced, IDX["f0_hz"]]) < 300


def _tone(sr: int, seconds: float, amp: float, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return amp * np.sin(2 * np.pi * f0 * t)


def _check_16k_mono_tone(y: np.ndarray, seconds: float, amp: float) -> None:
    assert y.ndim == 1 and y.dtype == np.float32
    assert len(y) == pytest.approx(16000 * seconds, abs=2)  # resampled to 16 kHz
    assert np.sqrt(np.mean(y[800:-800] ** 2)) == pytest.approx(amp / np.sqrt(2), rel=0.03)
    frames = frame_features(y, AudioConfig(f0="yin"))
    assert np.median(frames[5:-5, IDX["f0_hz"]]) == pytest.approx(220, rel=0.03)


def test_wav_8khz_stereo_is_mixed_down_and_resampled(tmp_path):
    from scipy.io import wavfile

    left, right = _tone(8000, 0.5, 0.5), _tone(8000, 0.5, 0.1)
    path = tmp_path / "stereo8k.wav"
    wavfile.write(path, 8000, (np.stack([left, right], axis=1) * 32767).astype(np.int16))
    _check_16k_mono_tone(load_wav(path), 0.5, amp=0.3)  # the mean of the channels


def test_wav_44khz_mono_from_the_wave_module(tmp_path):
    import wave

    path = tmp_path / "mono44k.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((_tone(44100, 0.5, 0.4) * 32767).astype("<i2").tobytes())
    _check_16k_mono_tone(load_wav(path), 0.5, amp=0.4)


def test_wav_three_channel_float_at_48khz(tmp_path):
    import soundfile as sf

    path = tmp_path / "three48k.wav"
    data = np.stack([_tone(48000, 0.4, a) for a in (0.6, 0.3, 0.0)], axis=1).astype(np.float32)
    sf.write(str(path), data, 48000, subtype="FLOAT")
    _check_16k_mono_tone(load_wav(path), 0.4, amp=0.3)
