"""COVAREP-style acoustic frame features at 100 Hz with librosa, pooled to words.

Input: a WAV (or anything libsndfile reads) at any sample rate, with any number of channels and
any sample format (8/16/24/32-bit PCM, float). It is read as float32 in [-1, 1], mixed down to mono
as the plain mean of its channels, and resampled to 16 kHz (``AudioConfig.sr``) with soxr's
high-quality resampler (librosa ``res_type="soxr_hq"``); a file already at 16 kHz is not resampled.
Frames: hop 10 ms (160
samples), analysis window 25 ms (400 samples, FFT 512) for spectral features, 64 ms for F0, 40 ms
for the periodicity / harmonic measures. Frame i is centred at ``i * 10 ms``. The vector (see
``FEATURE_NAMES``, 37 dims; ``docs/covarep_mapping.md`` maps it onto COVAREP's 74):

====  ==========================  ================================================================
idx   name                        definition
====  ==========================  ================================================================
0-23  mfcc_0..mfcc_23             MFCCs of a 40-band mel power spectrum (dB), DCT-II ortho
24    f0_hz                       F0 (pyin or yin, 60-500 Hz); 0 when unvoiced
25    vuv                         voicing flag (0/1)
26    voiced_prob                 pyin's voicing probability; for yin the periodicity r (0..1)
27    rms                         frame RMS of the STFT magnitude
28    log_energy_db               20*log10(rms), floored at -100 dB
29    spectral_centroid_khz       spectral centroid (kHz)
30    spectral_bandwidth_khz      spectral bandwidth, p=2 (kHz)
31    spectral_rolloff_khz        85 % roll-off frequency (kHz)
32    spectral_flatness           Wiener entropy (0..1)
33    zcr                         zero-crossing rate (per sample)
34    spectral_tilt_db_per_khz    least-squares slope of the dB spectrum over 0-8 kHz
                                  (glottal proxy)
35    h1h2_db                     H1-H2: level of the 1st minus the 2nd harmonic (dB); 0 if unvoiced
36    hnr_db                      HNR from the normalised autocorrelation at the F0 lag,
                                  10*log10(r/(1-r)) in [-10, 40] dB; 0 if unvoiced
====  ==========================  ================================================================

Word pooling: the mean of the frames in each word's span; ``f0_hz``, ``h1h2_db`` and ``hnr_db`` are
averaged over the span's voiced frames only (0 when none is voiced).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msaflow.feature_store.extract import UtteranceError
from msaflow.feature_store.extract.alignment import pool_spans, spans_to_frames, word_spans
from msaflow.feature_store.extract.paths import is_file

NAME = "audio"
VERSION = "1"


@dataclass(frozen=True)
class AudioConfig:
    sr: int = 16000
    hop_s: float = 0.01
    n_mfcc: int = 24
    n_mels: int = 40
    f0: str = "pyin"  # "pyin" (probabilistic, slower) or "yin" (fast)
    fmin: float = 60.0
    fmax: float = 500.0
    voicing_threshold: float = 0.45  # yin: periodicity r above which a frame is voiced

    def cache_config(self) -> dict[str, Any]:
        return asdict(self)


SCALAR_NAMES = [
    "f0_hz",
    "vuv",
    "voiced_prob",
    "rms",
    "log_energy_db",
    "spectral_centroid_khz",
    "spectral_bandwidth_khz",
    "spectral_rolloff_khz",
    "spectral_flatness",
    "zcr",
    "spectral_tilt_db_per_khz",
    "h1h2_db",
    "hnr_db",
]
VOICED_ONLY = ("f0_hz", "h1h2_db", "hnr_db")


def feature_names(config: AudioConfig | None = None) -> list[str]:
    config = config or AudioConfig()
    return [f"mfcc_{i}" for i in range(config.n_mfcc)] + SCALAR_NAMES


FEATURE_NAMES = feature_names()


def load_wav(path: str | Path, sr: int = 16000, utterance: str = "?") -> np.ndarray:
    """Mono float32 samples at ``sr``; a missing or unreadable file raises ``UtteranceError``."""
    import soundfile as sf

    path = Path(path)
    if not is_file(path):
        raise UtteranceError(utterance, path, "audio_path", "an existing WAV file")
    try:
        y, native = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        # The reason is the exception type only: the failure list lands in the store manifest.
        raise UtteranceError(
            utterance,
            path,
            "audio_path",
            "a readable WAV file (any rate, any channels)",
            f"libsndfile could not decode it ({type(exc).__name__})",
        ) from None
    y = y.mean(axis=1)
    if y.size == 0:
        raise UtteranceError(utterance, path, "audio_path", "a WAV with at least one sample")
    if native != sr:
        import librosa

        y = librosa.resample(y, orig_sr=native, target_sr=sr, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def _periodicity(y: np.ndarray, f0: np.ndarray, sr: int, hop: int, n_frames: int) -> np.ndarray:
    """Normalised autocorrelation r at the F0 lag per frame (40 ms frames); 0 where f0 is 0/NaN."""
    import librosa

    n = int(round(0.04 * sr))
    ypad = np.pad(y, (n // 2, n // 2 + hop))
    frames = librosa.util.frame(ypad, frame_length=n, hop_length=hop)[:, :n_frames].T  # (F, n)
    frames = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames, 2 * n, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n]  # (F, n)
    f0 = np.nan_to_num(f0[:n_frames])
    lag = np.where(f0 > 0, np.rint(sr / np.maximum(f0, 1e-6)), 0).astype(np.int64)
    lag = np.clip(lag, 0, n - 1)
    sq = np.concatenate(
        [np.zeros((frames.shape[0], 1)), np.cumsum(frames.astype(np.float64) ** 2, axis=1)], axis=1
    )
    rows = np.arange(frames.shape[0])
    e_head = sq[rows, n - lag]  # sum x[0 : n-lag]^2
    e_tail = sq[rows, n] - sq[rows, lag]  # sum x[lag : n]^2
    r = ac[rows, lag] / np.sqrt(np.maximum(e_head * e_tail, 1e-20))
    return np.where(lag > 0, np.clip(r, 0.0, 0.999), 0.0)


def _h1h2(
    y: np.ndarray, f0: np.ndarray, sr: int, hop: int, n_frames: int, voiced: np.ndarray
) -> np.ndarray:
    """H1-H2 (dB) from a Hann-windowed 40 ms frame zero-padded to 4096 points; 0 if unvoiced."""
    import librosa

    out = np.zeros(n_frames, dtype=np.float64)
    idx = np.flatnonzero(voiced[:n_frames] & (np.nan_to_num(f0[:n_frames]) > 0))
    if idx.size == 0:
        return out
    n, nfft = int(round(0.04 * sr)), 4096
    ypad = np.pad(y, (n // 2, n // 2 + hop))
    frames = librosa.util.frame(ypad, frame_length=n, hop_length=hop).T[idx] * np.hanning(n)
    mag = np.abs(np.fft.rfft(frames, nfft, axis=1))  # (V, nfft/2+1)
    df = sr / nfft
    offsets = np.arange(-3, 4)
    rows = np.arange(idx.size)[:, None]

    def peak(mult: int) -> np.ndarray:
        k = np.rint(mult * f0[idx] / df).astype(np.int64)[:, None] + offsets
        return mag[rows, np.clip(k, 0, mag.shape[1] - 1)].max(axis=1)

    out[idx] = 20 * np.log10((peak(1) + 1e-10) / (peak(2) + 1e-10))
    return out


def frame_features(y: np.ndarray, config: AudioConfig | None = None) -> np.ndarray:
    """(F, 37) float32 frame features of mono samples ``y`` at ``config.sr`` (see module doc)."""
    import librosa

    c = config or AudioConfig()
    sr, hop = c.sr, int(round(c.hop_s * c.sr))
    n_frames = 1 + len(y) // hop
    y = np.pad(y, (0, max(0, 1024 - len(y))))  # very short clips: pad so every window fits
    stft = np.abs(
        librosa.stft(y, n_fft=512, hop_length=hop, win_length=400, center=True)
    )  # (257, F')
    power = stft**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=c.n_mels)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=c.n_mfcc)  # (n_mfcc, F')
    rms = librosa.feature.rms(S=stft, frame_length=512)[0]
    centroid = librosa.feature.spectral_centroid(S=stft, sr=sr)[0] / 1000
    bandwidth = librosa.feature.spectral_bandwidth(S=stft, sr=sr)[0] / 1000
    rolloff = librosa.feature.spectral_rolloff(S=stft, sr=sr)[0] / 1000
    flatness = librosa.feature.spectral_flatness(S=stft)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=400, hop_length=hop)[0]
    freqs_khz = librosa.fft_frequencies(sr=sr, n_fft=512) / 1000
    db = 10 * np.log10(power + 1e-10)  # (257, F')
    fc = freqs_khz - freqs_khz.mean()
    tilt = (fc[:, None] * (db - db.mean(axis=0))).sum(axis=0) / (fc**2).sum()

    if c.f0 == "pyin":
        f0, vflag, vprob = librosa.pyin(
            y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=1024, hop_length=hop, center=True
        )
        f0 = np.where(vflag, np.nan_to_num(f0), 0.0)
        r = _periodicity(y, f0, sr, hop, n_frames)
        voiced = vflag.astype(bool)
    elif c.f0 == "yin":
        f0_raw = librosa.yin(
            y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=1024, hop_length=hop, center=True
        )
        r = _periodicity(y, f0_raw, sr, hop, n_frames)
        loud = rms[: len(r)] > max(1e-4, 0.02 * float(np.max(rms)))
        voiced = (r[:n_frames] > c.voicing_threshold) & loud[:n_frames]
        f0 = np.where(voiced, f0_raw[:n_frames], 0.0)
        vprob = r
    else:
        raise ValueError(f"AudioConfig.f0 must be 'pyin' or 'yin', got {c.f0!r}")
    hnr = np.where(
        voiced[:n_frames] & (r[:n_frames] > 0),
        np.clip(10 * np.log10(np.maximum(r[:n_frames], 1e-6) / (1 - r[:n_frames])), -10, 40),
        0.0,
    )
    h1h2 = _h1h2(y, f0, sr, hop, n_frames, voiced)

    cols = [
        mfcc.T,
        f0,
        voiced.astype(np.float64),
        vprob,
        rms,
        20 * np.log10(np.maximum(rms, 1e-5)),
        centroid,
        bandwidth,
        rolloff,
        flatness,
        zcr,
        tilt,
        h1h2,
        hnr,
    ]
    cols = [np.asarray(col)[:n_frames] for col in cols]
    cols = [col[:, None] if col.ndim == 1 else col for col in cols]
    out = np.concatenate(cols, axis=1).astype(np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def pool_to_words(
    frames: np.ndarray,
    duration: float,
    config: AudioConfig | None = None,
    *,
    timings: list[tuple[str, float, float]] | None = None,
    n_words: int = 0,
    max_words: int = 50,
) -> tuple[np.ndarray, str]:
    """Average frames over word spans -> ((W, d) float32, alignment mode).

    Modes: ``timings`` (each word's [start, end)), ``equal`` (no timings: the utterance split into
    ``n_words`` equal spans), ``windows`` (no transcript: fixed 100 ms windows). At most
    ``max_words``.
    """
    c = config or AudioConfig()
    starts, ends, mode = word_spans(timings, n_words, duration, max_words)
    lo, hi = spans_to_frames(starts, ends, 1.0 / c.hop_s, len(frames))
    pooled, _ = pool_spans(frames, lo, hi)
    names = feature_names(c)
    vuv = frames[:, names.index("vuv")] > 0.5
    v_idx = [names.index(n) for n in VOICED_ONLY]
    voiced_pooled, _ = pool_spans(frames[:, v_idx], lo, hi, valid=vuv)
    pooled[:, v_idx] = voiced_pooled
    return pooled, mode


def extract_audio_batch(
    utts,
    config: AudioConfig | None = None,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Frame features per WAV (cached by the file's sha256 + config) -> entries, failures, stats.

    Each entry holds ``frames`` (F, 37) float32 and ``duration`` (s).
    """
    from msaflow.feature_store.extract import failure_record
    from msaflow.feature_store.extract.cache import FeatureCache
    from msaflow.feature_store.extract.text import _progress
    from msaflow.feature_store.parquet_io import file_sha256

    c = config or AudioConfig()
    cache = FeatureCache(NAME, VERSION, c.cache_config(), root=cache_dir)
    entries, failures = {}, []
    with _progress(progress, len(utts), "audio") as p:
        task = p.add_task("audio", total=len(utts)) if p is not None else None
        for u in utts:
            try:
                if not is_file(u.audio):
                    raise UtteranceError(u.id, u.audio, "audio_path", "an existing WAV file")
                key = cache.key(file_sha256(u.audio))
                if not cache.has(key):
                    y = load_wav(u.audio, c.sr, utterance=u.id)
                    try:
                        frames = frame_features(y, c)
                    except Exception as exc:  # librosa on degenerate signals
                        raise UtteranceError(
                            u.id,
                            u.audio,
                            "audio_path",
                            "audio librosa can analyse",
                            f"{type(exc).__name__}: {exc}",
                        ) from exc
                    cache.put(key, {"frames": frames, "duration": np.float64(len(y) / c.sr)})
                entries[u.id] = str(cache.path(key))
            except UtteranceError as exc:
                failures.append(failure_record(exc, NAME))
            if p is not None:
                p.advance(task)
    return {
        "entries": entries,
        "failures": failures,
        "cache": cache.stats(),
        "feature_names": feature_names(c),
        "config": c.cache_config(),
    }
