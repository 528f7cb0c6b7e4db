"""Visual features from per-frame facial CSVs: OpenFace 2.x or Facet-style, averaged per word span.

**OpenFace 2.x** (``FeatureExtraction`` output; header names carry leading spaces, stripped here).
Needs ``timestamp`` and ``success``; uses 49 columns (``OPENFACE_COLUMNS``): gaze vectors
``gaze_{0,1}_{x,y,z}`` and ``gaze_angle_{x,y}`` (8), head pose ``pose_T{x,y,z}``/``pose_R{x,y,z}`` (6),
AU intensities ``AU01_r .. AU45_r`` (17), AU presence ``AU01_c .. AU45_c`` (18). ``face_id``,
``frame`` and ``confidence`` are read but not features.

**Facet-style** (documented layout, as FACET/iMotions exports are summarised in CMU-MOSI):
``Frametime`` (seconds), 12 emotion-evidence columns ``<Emotion> Evidence`` (``FACET_EMOTIONS``) and
20 action-unit evidence columns ``AU<n> Evidence`` (``FACET_AUS``): 32 features. An optional
``success`` column works as for OpenFace; otherwise a row whose features are all empty is a failed frame.

Frames with failed face detection (``success == 0``, or all-NaN rows) are masked: never averaged in.
A word span with no valid frame is all zeros (count 0) -- it is not interpolated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.extract import UtteranceError
from feature_store.extract.alignment import pool_spans, spans_to_indices, word_spans

NAME = "visual"
VERSION = "1"

_AU_R = ["01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "45"]
_AU_C = ["01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "28", "45"]
OPENFACE_COLUMNS = (
    [f"gaze_{e}_{a}" for e in (0, 1) for a in ("x", "y", "z")] + ["gaze_angle_x", "gaze_angle_y"]
    + [f"pose_T{a}" for a in "xyz"] + [f"pose_R{a}" for a in "xyz"]
    + [f"AU{n}_r" for n in _AU_R] + [f"AU{n}_c" for n in _AU_C]
)
FACET_EMOTIONS = ["Joy", "Anger", "Surprise", "Fear", "Contempt", "Disgust", "Sadness", "Confusion",
                  "Frustration", "Neutral", "Positive", "Negative"]
FACET_AUS = [1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 18, 20, 23, 24, 25, 26, 28, 43]
FACET_COLUMNS = [f"{e} Evidence" for e in FACET_EMOTIONS] + [f"AU{n} Evidence" for n in FACET_AUS]


@dataclass(frozen=True)
class VisualConfig:
    kind: str = "auto"  # "openface", "facet" or "auto" (by header)

    def cache_config(self) -> dict[str, Any]:
        return asdict(self)


def detect_kind(columns: list[str]) -> str | None:
    cols = set(columns)
    if "timestamp" in cols and any(c.startswith(("AU", "gaze_", "pose_")) for c in cols):
        return "openface"
    if "Frametime" in cols:
        return "facet"
    return None


def columns_for(kind: str) -> list[str]:
    return list(OPENFACE_COLUMNS if kind == "openface" else FACET_COLUMNS)


def read_visual_csv(path: str | Path, config: VisualConfig | None = None,
                    utterance: str = "?") -> dict[str, np.ndarray]:
    """Read one per-frame CSV -> ``{"times" (F,), "features" (F, d), "valid" (F,) bool, "kind"}``."""
    import pandas as pd

    c = config or VisualConfig()
    path = Path(path)
    if not path.is_file():
        raise UtteranceError(utterance, path, "visual_path", "an existing per-frame CSV file")
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except Exception as exc:  # pandas: EmptyDataError, ParserError, UnicodeDecodeError
        raise UtteranceError(utterance, path, "visual_path", "a readable CSV",
                             f"{type(exc).__name__}: {exc}") from exc
    df.columns = [str(col).strip() for col in df.columns]
    kind = detect_kind(list(df.columns)) if c.kind == "auto" else c.kind
    if kind not in ("openface", "facet"):
        raise UtteranceError(utterance, path, "visual_path columns",
                             "an OpenFace 2.x header (timestamp, success, gaze_*, pose_*, AU*_r, AU*_c) "
                             "or a Facet header (Frametime, '<Emotion> Evidence', 'AU<n> Evidence')",
                             f"got {list(df.columns)[:8]}")
    time_col = "timestamp" if kind == "openface" else "Frametime"
    wanted = columns_for(kind)
    required = [time_col] + (["success"] if kind == "openface" else []) + wanted
    missing = [col for col in required if col not in df.columns]
    if missing:
        raise UtteranceError(utterance, path, "visual_path columns", f"the {kind} columns {required[:3]}...",
                             f"missing {len(missing)}: {missing[:6]}{'...' if len(missing) > 6 else ''}")
    try:
        feats = df[wanted].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        times = pd.to_numeric(df[time_col], errors="coerce").to_numpy(np.float64)
    except Exception as exc:  # noqa: BLE001
        raise UtteranceError(utterance, path, "visual_path", "numeric feature columns", str(exc)) from exc
    valid = ~np.isnan(feats).all(axis=1) & ~np.isnan(times)
    if "success" in df.columns:
        valid &= pd.to_numeric(df["success"], errors="coerce").fillna(0).to_numpy() > 0.5
    order = np.argsort(np.nan_to_num(times, nan=np.inf), kind="stable")
    times, feats, valid = times[order], feats[order], valid[order]
    keep = ~np.isnan(times)
    return {"times": times[keep], "features": np.nan_to_num(feats[keep]).astype(np.float32),
            "valid": valid[keep], "kind": np.array(kind)}


def pool_to_words(frames: dict[str, np.ndarray], *, timings: list[tuple[str, float, float]] | None = None,
                  n_words: int = 0, duration: float | None = None, max_words: int = 50) -> tuple[np.ndarray, np.ndarray, str]:
    """Average valid frames over word spans -> ((W, d) float32, counts (W,), alignment mode).

    Without timings the span ``[0, duration)`` (default: the last frame's time) is split into
    ``n_words`` equal spans, or into 100 ms windows when there is no transcript.
    """
    times, feats, valid = frames["times"], frames["features"], frames["valid"]
    if duration is None:
        period = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
        duration = float(times[-1] + period) if len(times) else 0.0
    starts, ends, mode = word_spans(timings, n_words, duration, max_words)
    lo, hi = spans_to_indices(times, starts, ends)
    pooled, counts = pool_spans(feats, lo, hi, valid=valid)
    return pooled, counts, mode


def extract_visual_batch(utts, config: VisualConfig | None = None, *, cache_dir: Path | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Parse each CSV (cached by the file's sha256 + config) -> entries, failures, stats.

    All utterances must share one layout; rows of the minority layout fail. Entries hold ``times``,
    ``features``, ``valid``, ``kind``.
    """
    from collections import Counter

    from feature_store.extract import failure_record
    from feature_store.extract.cache import FeatureCache, load_entry, sha256_file

    c = config or VisualConfig()
    cache = FeatureCache(NAME, VERSION, c.cache_config(), root=cache_dir)
    entries, failures, kinds = {}, [], {}
    for u in utts:
        try:
            if not Path(u.visual).is_file():
                raise UtteranceError(u.id, u.visual, "visual_path", "an existing per-frame CSV file")
            key = cache.key(sha256_file(u.visual))
            if cache.has(key):
                kinds[u.id] = str(load_entry(cache.path(key))["kind"])
            else:
                parsed = read_visual_csv(u.visual, c, utterance=u.id)
                cache.put(key, parsed)
                kinds[u.id] = str(parsed["kind"])
            entries[u.id] = str(cache.path(key))
        except UtteranceError as exc:
            failures.append(failure_record(exc, NAME))
    kind = Counter(kinds.values()).most_common(1)[0][0] if kinds else None
    for uid, k in kinds.items():
        if k != kind:
            entries.pop(uid)
            failures.append(failure_record(UtteranceError(uid, None, "visual_path", f"a {kind} CSV like the others",
                                                          f"got a {k} CSV"), NAME))
    return {"entries": entries, "failures": failures, "cache": cache.stats(), "kind": kind,
            "feature_names": columns_for(kind) if kind else []}
