from __future__ import annotations

import numpy as np
import pytest

from msaflow.feature_store.extract.alignment import (
    equal_spans,
    fixed_windows,
    parse_words,
    pool_spans,
    spans_to_frames,
    spans_to_indices,
)


def test_word_span_maps_to_the_right_frames():
    # 100 Hz: frame i at i*10 ms. "hello" [0.10, 0.25) -> frames 10..24; "world" [0.25, 0.40)
    # -> 25..39
    lo, hi = spans_to_frames(np.array([0.10, 0.25]), np.array([0.25, 0.40]), fps=100, n_frames=100)
    assert lo.tolist() == [10, 25] and hi.tolist() == [25, 40]
    # 30 fps video: [0.5, 1.0) holds frames 15..29
    lo, hi = spans_to_frames(np.array([0.5]), np.array([1.0]), fps=30, n_frames=60)
    assert (lo[0], hi[0]) == (15, 30)


def test_short_word_gets_nearest_frame_and_outside_span_is_empty():
    lo, hi = spans_to_frames(np.array([0.021, 5.0]), np.array([0.024, 5.1]), fps=10, n_frames=10)
    assert (lo[0], hi[0]) == (0, 1)  # 22.5 ms is nearest frame 0 (t=0.0), not frame 1 (t=0.1)
    assert lo[1] == hi[1]  # beyond the 1 s signal: no frame


def test_irregular_timestamps():
    times = np.array([0.0, 0.033, 0.07, 0.1, 0.2])
    lo, hi = spans_to_indices(times, np.array([0.03]), np.array([0.1]))
    assert (lo[0], hi[0]) == (1, 3)


def test_pool_spans_masks_invalid_frames_and_gives_zeros_for_empty():
    frames = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2))
    valid = np.ones(10, bool)
    valid[5:8] = False
    pooled, counts = pool_spans(frames, np.array([0, 4, 5]), np.array([4, 9, 8]), valid)
    assert pooled[0].tolist() == [1.5, 1.5]
    assert pooled[1].tolist() == [6.0, 6.0] and counts[1] == 2  # frames 4 and 8 only
    assert pooled[2].tolist() == [0.0, 0.0] and counts[2] == 0  # no valid frame -> zeros
    assert pooled.dtype == np.float32


def test_equal_spans_and_windows():
    s, e = equal_spans(2.0, 4)
    assert s.tolist() == [0, 0.5, 1.0, 1.5] and e.tolist() == [0.5, 1.0, 1.5, 2.0]
    s, e = fixed_windows(0.35)
    assert len(s) == 4 and e[-1] == pytest.approx(0.35)
    assert len(fixed_windows(100.0, max_windows=50)[0]) == 50


def test_parse_words():
    assert parse_words('[["hi", 0, 0.2], ["there", 0.2, 0.5]]') == [
        ("hi", 0.0, 0.2),
        ("there", 0.2, 0.5),
    ]
    assert parse_words("") is None and parse_words(float("nan")) is None
    with pytest.raises(ValueError):
        parse_words('[["hi", 0.5, 0.2]]')
