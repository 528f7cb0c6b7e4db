"""Word alignment: word spans (seconds) -> frame index ranges, and pooling of frames over spans.

All functions are vectorised (``np.searchsorted`` + cumulative sums); no Python loop over words.
A frame belongs to a word when its time ``t`` satisfies ``start <= t < end``. A word shorter than
one frame period (or falling between frames) gets the single frame nearest to its midpoint, so every
word inside the signal maps to at least one frame.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

WINDOW_S = 0.1  # fixed windows used when there is no transcript at all


def frame_times(n_frames: int, fps: float, offset: float = 0.0) -> np.ndarray:
    """Times (s) of ``n_frames`` frames at ``fps``; frame i is at ``offset + i / fps``."""
    return offset + np.arange(n_frames, dtype=np.float64) / float(fps)


def spans_to_indices(
    times: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map spans to half-open index ranges ``[lo, hi)`` into sorted frame ``times``.

    Returns int64 arrays ``lo, hi`` of shape (W,). Spans entirely outside the signal get
    ``lo == hi`` (an empty range); a span inside the signal that contains no frame gets its nearest
    frame.
    """
    times = np.asarray(times, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.maximum(np.asarray(ends, dtype=np.float64), starts)
    n = len(times)
    lo = np.searchsorted(times, starts, side="left")
    hi = np.searchsorted(times, ends, side="left")
    if n == 0:
        return lo.astype(np.int64), hi.astype(np.int64)
    empty = hi <= lo
    if empty.any():
        period = float(np.median(np.diff(times))) if n > 1 else 1.0
        inside = (ends >= times[0] - period / 2) & (starts <= times[-1] + period / 2)
        mid = (starts + ends) / 2
        nearest = np.clip(np.searchsorted(times, mid), 1, n - 1) if n > 1 else np.zeros_like(lo)
        if n > 1:
            left_closer = (mid - times[nearest - 1]) <= (times[nearest] - mid)
            nearest = np.where(left_closer, nearest - 1, nearest)
        fix = empty & inside
        lo = np.where(fix, nearest, lo)
        hi = np.where(fix, nearest + 1, np.where(empty, lo, hi))
    return lo.astype(np.int64), hi.astype(np.int64)


def spans_to_frames(
    starts: np.ndarray, ends: np.ndarray, fps: float, n_frames: int, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Map word spans (s) to frame ranges ``[lo, hi)`` for a signal sampled at ``fps``."""
    return spans_to_indices(frame_times(n_frames, fps, offset), starts, ends)


def pool_spans(
    frames: np.ndarray, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``frames`` (F, d) over each range; frames with ``valid == False`` are left out.

    Returns ``(pooled (W, d) float32, counts (W,) int64)``. A span with no valid frame is all zeros
    (and its count is 0) -- it is never NaN.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2:
        raise ValueError(f"frames must be (F, d), got {frames.shape}")
    f, d = frames.shape
    w = np.ones(f, dtype=np.float64) if valid is None else np.asarray(valid, dtype=np.float64)
    x = np.where(w[:, None] > 0, np.nan_to_num(frames), 0.0)
    csum = np.zeros((f + 1, d), dtype=np.float64)
    np.cumsum(x, axis=0, out=csum[1:])
    ccount = np.concatenate([[0.0], np.cumsum(w > 0)])
    lo = np.clip(lo, 0, f)
    hi = np.clip(np.maximum(hi, lo), 0, f)
    sums = csum[hi] - csum[lo]
    counts = ccount[hi] - ccount[lo]
    pooled = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    return pooled.astype(np.float32), counts.astype(np.int64)


def equal_spans(duration: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` equal spans covering ``[0, duration)`` (used when words have no timings)."""
    edges = np.linspace(0.0, float(duration), int(n) + 1)
    return edges[:-1], edges[1:]


def fixed_windows(
    duration: float, window: float = WINDOW_S, max_windows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive fixed windows over ``[0, duration)`` (used when there is no transcript)."""
    n = max(1, int(np.ceil(float(duration) / window - 1e-9)))
    if max_windows is not None:
        n = min(n, max_windows)
    starts = np.arange(n) * window
    return starts, np.minimum(starts + window, max(duration, window))


def word_spans(
    timings: Sequence | None, n_words: int, duration: float, max_words: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """The spans to pool over, at most ``max_words``, and which rule chose them: ``timings`` (each
    word's ``(word, start, end)``), ``equal`` (no timings: ``n_words`` equal spans) or ``windows``
    (no transcript: fixed windows)."""
    if timings:
        starts = np.array([t[1] for t in timings])[:max_words]
        ends = np.array([t[2] for t in timings])[:max_words]
        return starts, ends, "timings"
    if n_words > 0:
        starts, ends = equal_spans(duration, n_words)
        return starts[:max_words], ends[:max_words], "equal"
    starts, ends = fixed_windows(duration, max_windows=max_words)
    return starts, ends, "windows"


def parse_words(value: str | Sequence | None) -> list[tuple[str, float, float]] | None:
    """Parse the manifest's ``words`` cell: JSON ``[[word, start_s, end_s], ...]``; empty
    -> None."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        value = json.loads(value)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError("the words cell is not a JSON list")
    # Messages give the item's position, never its text: they end up in the store manifest.
    out = []
    for k, item in enumerate(value):
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 3:
            raise ValueError(f"word timing #{k} is not [word, start_s, end_s]")
        try:
            word, start, end = str(item[0]), float(item[1]), float(item[2])
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"word timing #{k} has a start or end that is not a number") from None
        if not (np.isfinite(start) and np.isfinite(end)):
            raise ValueError(f"word timing #{k} has a start or end that is not finite")
        if end < start:
            raise ValueError(f"word timing #{k} ends before it starts")
        out.append((word, start, end))
    return out
