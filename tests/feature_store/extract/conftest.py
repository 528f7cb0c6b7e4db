"""Small generated inputs for the extractor tests: WAV tones, OpenFace / Facet CSVs, manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msaflow.feature_store.extract.visual import FACET_COLUMNS, OPENFACE_COLUMNS


def write_tone(
    path: Path,
    seconds: float = 1.0,
    f0: float = 220.0,
    sr: int = 16000,
    silence: float = 0.0,
    channels: int = 1,
) -> Path:
    """A harmonic tone (f0, 2f0 at half amplitude) followed by ``silence`` seconds of
    near-silence."""
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * f0 * t) + 0.25 * np.sin(2 * np.pi * 2 * f0 * t)
    y = np.concatenate([y, 1e-4 * np.random.default_rng(0).standard_normal(int(silence * sr))])
    data = np.stack([y] * channels, axis=1) if channels > 1 else y
    sf.write(str(path), data.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_openface(
    path: Path,
    seconds: float = 1.0,
    fps: float = 30.0,
    fail: tuple[float, float] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """An OpenFace 2.x CSV (header with leading spaces, as OpenFace writes it).

    Feature value of every column at frame i is ``i`` (so span means are easy to check); frames
    whose time falls inside ``fail`` have success=0 and value 999.
    """
    n = int(seconds * fps)
    times = np.arange(n) / fps
    cols = ["frame", "face_id", "timestamp", "confidence", "success"] + [
        c for c in OPENFACE_COLUMNS if c not in drop
    ]
    lines = [", ".join(cols)]
    for i, t in enumerate(times):
        bad = fail is not None and fail[0] <= t < fail[1]
        value = 999.0 if bad else float(i)
        row = [str(i + 1), "0", f"{t:.3f}", "0.0" if bad else "0.98", "0" if bad else "1"]
        row += [f"{value:.3f}"] * (len(cols) - 5)
        lines.append(", ".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_facet(path: Path, seconds: float = 1.0, fps: float = 30.0) -> Path:
    n = int(seconds * fps)
    cols = ["Frametime"] + FACET_COLUMNS
    lines = [",".join(f'"{c}"' if " " in c else c for c in cols)]
    for i in range(n):
        lines.append(",".join([f"{i / fps:.4f}"] + [f"{0.1 * i:.3f}"] * len(FACET_COLUMNS)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tone_wav(tmp_path) -> Path:
    return write_tone(tmp_path / "tone.wav", seconds=0.6, silence=0.4)


@pytest.fixture(scope="session")
def minilm():
    """The real offline MiniLM encoder, loaded once per session."""
    from msaflow.feature_store.extract.text import TextConfig, get_encoder

    return get_encoder(TextConfig(max_words=50))


@pytest.fixture(scope="session")
def meld_dir() -> Path:
    """MELD's per-split CSVs in ../shared/data/meld (GPL-3: read in place, never copied)."""
    path = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "meld"
    if not all((path / f"{s}_sent_emo.csv").is_file() for s in ("train", "dev", "test")):
        pytest.skip(f"MELD CSVs not present in {path}")
    return path
