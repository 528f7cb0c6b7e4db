"""Extraction speed on CPU: text sentences/s (MiniLM, batch 64) and audio seconds processed per \
second.

    .venv/bin/python bench/extract_speed.py [--sentences 512] [--wavs 8] [--threads N]

Text uses the first N real CMU-MOSI transcripts when ../shared/data/mosi_label.csv exists (else
generated sentences); the model loads and warms up before timing. Audio: synthesised 3-5 s
harmonic+noise WAVs at 16 kHz, read + full 37-dim frame features, with yin and with pyin (warmed
up). No cache is involved.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # bench/feature_store.py shadows the package
from msaflow.settings import apply_defaults  # noqa: E402

apply_defaults()

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi_label.csv"


def sentences(n: int) -> tuple[list[list[str]], str]:
    if SHARED.is_file():
        import pandas as pd

        texts = pd.read_csv(SHARED, keep_default_na=False)["text"].astype(str).head(n).tolist()
        return [t.split() for t in texts], f"first {n} CMU-MOSI transcripts"
    rng = np.random.default_rng(0)
    vocab = [
        "the",
        "movie",
        "was",
        "really",
        "good",
        "bad",
        "not",
        "great",
        "i",
        "think",
        "acting",
        "plot",
        "story",
        "so",
        "boring",
        "fun",
    ]
    return [
        list(rng.choice(vocab, rng.integers(4, 25))) for _ in range(n)
    ], f"{n} generated sentences"


def bench_text(n: int) -> dict:
    from msaflow.feature_store.extract.text import TextConfig, TextEncoder

    words, what = sentences(n)
    enc = TextEncoder(TextConfig(batch_size=64))
    enc.encode(words[:64])  # warm-up
    t0 = time.perf_counter()
    enc.encode(words)
    s = time.perf_counter() - t0
    return {
        "what": what,
        "n": n,
        "seconds": s,
        "per_s": n / s,
        "ms_each": 1000 * s / n,
        "mean_words": float(np.mean([len(w) for w in words])),
    }


def bench_audio(n: int) -> dict:
    import soundfile as sf

    from msaflow.feature_store.extract.audio import AudioConfig, frame_features, load_wav

    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths, total = [], 0.0
        for i in range(n):
            dur = float(rng.uniform(3, 5))
            t = np.arange(int(dur * 16000)) / 16000
            f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
            y = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) * (np.sin(2 * np.pi * 2 * t) > -0.3)
            y += 0.01 * rng.standard_normal(len(t))
            p = Path(tmp) / f"{i}.wav"
            sf.write(p, y.astype(np.float32), 16000)
            paths.append(p)
            total += dur
        for method in ("yin", "pyin"):
            cfg = AudioConfig(f0=method)
            frame_features(load_wav(paths[0]), cfg)  # warm-up (numba)
            t0 = time.perf_counter()
            for p in paths:
                frame_features(load_wav(p), cfg)
            s = time.perf_counter() - t0
            out[method] = {"audio_s": total, "seconds": s, "x_realtime": total / s}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--wavs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    t = bench_text(args.sentences)
    print(
        f"text  | MiniLM-L6 (384-d), batch 64, {t['what']} (mean {t['mean_words']:.1f} words): "
        f"{t['per_s']:.0f} sentences/s ({t['ms_each']:.2f} ms/sentence, {t['seconds']:.2f} s)"
    )
    for method, r in bench_audio(args.wavs).items():
        print(
            f"audio | {method:4s}: {r['audio_s']:.1f} s of audio in {r['seconds']:.2f} s = "
            f"{r['x_realtime']:.1f} audio-seconds per second"
        )


if __name__ == "__main__":
    main()
