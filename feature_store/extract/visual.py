"""Visual features from per-frame facial files (OpenFace 1.x/2.x CSVs, FACET exports), averaged per
word span.

Layouts, detected from the header:

**OpenFace** -- ``FeatureExtraction`` (2.x, with all outputs or any subset of ``-gaze -pose -aus``),
``FaceLandmarkVidMulti`` (2.x, several ``face_id`` rows per frame) and OpenFace 1.x (no ``face_id``,
no ``gaze_angle_*``). Comma-separated; OpenFace 2 writes ``", "`` separators, so spaces around names
and values are stripped. Time is ``timestamp`` (s). Feature columns are the behavioural ones:
gaze vectors ``gaze_{0,1}_{x,y,z}``, ``gaze_angle_{x,y}``, head pose
``pose_T{x,y,z}``/``pose_R{x,y,z}``, AU intensities ``AU<nn>_r`` and presences ``AU<nn>_c``.
Landmarks (``eye_lmk_*``, ``x_*``, ``y_*``, ``X_*``, ``Y_*``, ``Z_*``) and shape parameters
(``p_*``) are camera- and head-position-dependent geometry: they are never features (``p_scale`` and
``x_*``/``y_*`` only rank faces, below).

*Several faces per frame* (``FaceLandmarkVidMulti``): one row is kept per ``frame`` -- the
successful one with the highest ``confidence``; ties go to the largest face (``p_scale``, else the
area of the 2-D landmark bounding box ``x_*``/``y_*``), then to the lowest ``face_id``. The choice
is per frame, not per ``face_id``, because that tool's face ids are tracker slots that are re-used
after a face is lost; in a monologue clip the speaker is the confidently tracked, largest face.

**FACET** -- iMotions exports of Emotient FACET: tab-separated, ``#`` metadata lines (or up to 64
lines of any preamble) before the header, ``Timestamp`` in milliseconds (taken relative to the first
row), ``<Name> Evidence`` and ``<Name> Intensity`` columns (``Joy Evidence``, ``AU1 Evidence``,
...), ``NoOfFaces`` when present. The CMU-MOSI layout (commas, ``Frametime`` in seconds) reads the
same way. Feature columns are the ``Evidence`` columns, then the ``Intensity`` ones, emotions before
AUs.

**Column choice** (``VisualConfig.profile``, ``--visual-profile``):

* ``auto`` (default): each file's feature columns, as listed above. Every visual file of a manifest
  must have the same set; when two differ, extraction stops with a ``DataError`` naming both files
  and the columns that differ (mixing ``-aus`` and full OpenFace runs would make dimensions mean
  different things across utterances). Pick a profile to use a common subset instead.
* a named profile (``PROFILES``): exactly its columns, in its order; extra columns are ignored, and
  a file missing any of them fails (that utterance is left out, the error names the file and the
  missing columns). ``openface-aus`` (35: AU*_r, AU*_c), ``openface-aus-pose`` (41: + pose),
  ``openface-full`` (49: + gaze and gaze angles; not OpenFace 1.x, which has no gaze angles) and
  ``facet`` (32 Evidence columns: 12 emotions, 20 AUs).

The choice, the columns and the face rule are returned as ``manifest_config`` and stored in the
store manifest. Frames with failed face detection (``success == 0``, ``NoOfFaces == 0``, or every
feature empty) are masked: never averaged in. A word span with no valid frame is all zeros (count
0), not interpolated. Errors name the file and what was expected, never its contents.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import InitVar, asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msaflow.feature_store.extract import DataError, UtteranceError, read_error_reason
from msaflow.feature_store.extract.alignment import pool_spans, spans_to_indices, word_spans
from msaflow.feature_store.extract.paths import is_file

NAME = "visual"
VERSION = "2"  # entries carry their column names; columns chosen per file (auto) or by profile

_AU_R = [
    "01",
    "02",
    "04",
    "05",
    "06",
    "07",
    "09",
    "10",
    "12",
    "14",
    "15",
    "17",
    "20",
    "23",
    "25",
    "26",
    "45",
]
_AU_C = [
    "01",
    "02",
    "04",
    "05",
    "06",
    "07",
    "09",
    "10",
    "12",
    "14",
    "15",
    "17",
    "20",
    "23",
    "25",
    "26",
    "28",
    "45",
]
GAZE_COLUMNS = [f"gaze_{e}_{a}" for e in (0, 1) for a in ("x", "y", "z")] + [
    "gaze_angle_x",
    "gaze_angle_y",
]
POSE_COLUMNS = [f"pose_T{a}" for a in "xyz"] + [f"pose_R{a}" for a in "xyz"]
AU_COLUMNS = [f"AU{n}_r" for n in _AU_R] + [f"AU{n}_c" for n in _AU_C]
OPENFACE_COLUMNS = GAZE_COLUMNS + POSE_COLUMNS + AU_COLUMNS
FACET_EMOTIONS = [
    "Joy",
    "Anger",
    "Surprise",
    "Fear",
    "Contempt",
    "Disgust",
    "Sadness",
    "Confusion",
    "Frustration",
    "Neutral",
    "Positive",
    "Negative",
]
FACET_AUS = [1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 18, 20, 23, 24, 25, 26, 28, 43]
FACET_COLUMNS = [f"{e} Evidence" for e in FACET_EMOTIONS] + [f"AU{n} Evidence" for n in FACET_AUS]

PROFILES: dict[str, tuple[str, list[str]]] = {
    "openface-aus": ("openface", AU_COLUMNS),
    "openface-aus-pose": ("openface", POSE_COLUMNS + AU_COLUMNS),
    "openface-full": ("openface", OPENFACE_COLUMNS),
    "facet": ("facet", FACET_COLUMNS),
}
PROFILE_CHOICES = ("auto", *PROFILES)
_LEGACY_KINDS = {"openface": "openface-full"}  # the old --visual-kind openface required these 49

FACE_SELECTION = (
    "one row per frame: success first, then highest confidence, then largest face "
    "(p_scale, else 2-D landmark bbox area), then lowest face_id"
)
FAILED_FRAMES = "masked (success 0, NoOfFaces 0 or no values); a span with no valid frame is zeros"
HEADER_EXPECTED = (
    "an OpenFace CSV (a timestamp column and gaze_*, pose_*, AU*_r or AU*_c columns) or a FACET "
    "export (Timestamp or Frametime and '<Name> Evidence' columns)"
)
_MAX_PREAMBLE = 64  # lines searched for the header (iMotions metadata comes first)


@dataclass(frozen=True)
class VisualConfig:
    profile: str = "auto"  # "auto" or a key of PROFILES
    kind: InitVar[str | None] = (
        None  # legacy --visual-kind: auto, openface (= openface-full), facet
    )

    def __post_init__(self, kind: str | None) -> None:
        if kind is not None and kind != "auto":
            object.__setattr__(self, "profile", _LEGACY_KINDS.get(kind, kind))
        if self.profile not in PROFILE_CHOICES:
            raise ValueError(
                f"visual profile must be one of {', '.join(PROFILE_CHOICES)}; got {self.profile!r}"
            )

    def cache_config(self) -> dict[str, Any]:
        return asdict(self)


def feature_key(layout: str, name: str) -> tuple | None:
    """Canonical sort key of a feature column of ``layout``, or None when ``name`` is not a
    feature."""
    if layout == "openface":
        if m := re.fullmatch(r"gaze_([01])_([xyz])", name):
            return (0, int(m[1]), "xyz".index(m[2]))
        if m := re.fullmatch(r"gaze_angle_([xy])", name):
            return (1, 0, "xy".index(m[1]))
        if m := re.fullmatch(r"pose_([TR])([xyz])", name):
            return (2, "TR".index(m[1]), "xyz".index(m[2]))
        if m := re.fullmatch(r"AU(\d{1,2})_([rc])", name):
            return (3, "rc".index(m[2]), int(m[1]))
        return None
    if layout == "facet":
        # Tight pattern: the name is structured, so a non-FACET header can never pass as a feature
        # name.
        m = re.fullmatch(r"(?:AU(\d{1,2})|([A-Z][A-Za-z]{1,20})) (Evidence|Intensity)", name)
        if m is None:
            return None
        measure = ("Evidence", "Intensity").index(m[3])
        if m[1]:
            return (measure, 1, int(m[1]))
        return (
            measure,
            0,
            FACET_EMOTIONS.index(m[2]) if m[2] in FACET_EMOTIONS else len(FACET_EMOTIONS),
        )
    return None


def detect_kind(columns: list[str]) -> str | None:
    cols = set(columns)
    if "timestamp" in cols and any(feature_key("openface", c) for c in cols):
        return "openface"
    if cols & {"Frametime", "Timestamp"} and any(feature_key("facet", c) for c in cols):
        return "facet"
    return None


def columns_for(kind: str, columns: list[str] | None = None) -> list[str]:
    """The feature columns of ``kind`` among ``columns`` in canonical order (all known ones if
    None)."""
    if columns is None:
        return list(OPENFACE_COLUMNS if kind == "openface" else FACET_COLUMNS)
    feats = [c for c in columns if feature_key(kind, c) is not None]
    return sorted(feats, key=lambda c: (feature_key(kind, c), c))


def _locate_header(path: Path) -> tuple[int, str]:
    """(lines before the header, separator): skips ``#`` metadata and any preamble up to the
    header."""
    with open(path, "rb") as fh:
        raw = [fh.readline(1 << 16) for _ in range(_MAX_PREAMBLE)]
    lines = [
        b.decode("utf-8-sig" if i == 0 else "utf-8", errors="replace").rstrip("\r\n")
        for i, b in enumerate(raw)
    ]
    first = None
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        if first is None:
            first = (i, sep)
        if {f.strip().strip('"') for f in line.split(sep)} & {
            "timestamp",
            "Timestamp",
            "Frametime",
        }:
            return i, sep
    return first if first is not None else (0, ",")


def _a(kind: str) -> str:
    return f"an {kind}" if kind.startswith("o") else f"a {kind}"


def _floats(frame) -> np.ndarray:
    """Cells as float64, NaN where a cell is not a number. A column holding an integer beyond float
    range makes ``pd.to_numeric`` raise OverflowError (found by the fuzz campaign); such a column is
    converted cell by cell instead."""
    import pandas as pd

    if frame.ndim == 2:
        if frame.shape[1] == 0:
            return np.empty((len(frame), 0), dtype=np.float64)
        return np.column_stack([_floats(frame.iloc[:, j]) for j in range(frame.shape[1])])
    try:
        return pd.to_numeric(frame, errors="coerce").to_numpy(np.float64)
    except (OverflowError, TypeError, ValueError):

        def one(v: object) -> float:
            try:
                return float(
                    str(v).strip()
                )  # a digit string beyond range parses as inf, not an error
            except (OverflowError, TypeError, ValueError):
                return float("nan")

        return np.array([one(v) for v in frame.to_numpy(object)], dtype=np.float64)


def _num(df, col: str, default: float) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), default, dtype=np.float64)
    x = _floats(df[col])
    return np.where(np.isnan(x), default, x)


def _face_size(df) -> np.ndarray:
    if "p_scale" in df.columns:
        return _num(df, "p_scale", 0.0)
    xs = [c for c in df.columns if re.fullmatch(r"x_\d+", c)]
    ys = [c for c in df.columns if re.fullmatch(r"y_\d+", c)]
    if xs and ys:
        x = _floats(df[xs])
        y = _floats(df[ys])
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # rows with no landmarks give NaN, then 0
            area = (np.nanmax(x, 1) - np.nanmin(x, 1)) * (np.nanmax(y, 1) - np.nanmin(y, 1))
        return np.nan_to_num(area)
    return np.zeros(len(df))


def select_faces(df, key_col: str):
    """One row per ``key_col`` value (see the module doc); ``df`` unchanged without ``face_id``
    repeats."""
    if "face_id" not in df.columns:
        return df
    key = _num(df, key_col, np.nan)
    known = key[~np.isnan(key)]
    if len(np.unique(known)) == len(known):
        return df  # one face per frame already
    success = _num(df, "success", 1.0) > 0.5
    order = np.lexsort(
        (_num(df, "face_id", np.inf), -_face_size(df), -_num(df, "confidence", 0.0), ~success, key)
    )
    k = key[order]
    first = np.r_[True, k[1:] != k[:-1]]  # NaN keys never compare equal, so none is dropped here
    return df.iloc[np.sort(order[first])]


def read_visual_csv(
    path: str | Path, config: VisualConfig | None = None, utterance: str = "?"
) -> dict[str, np.ndarray]:
    """Read one per-frame file -> ``{"times" (F,), "features" (F, d), "valid" (F,) bool, "kind",
    "names" (d,)}``."""
    import pandas as pd

    c = config or VisualConfig()
    path = Path(path)
    if not is_file(path):
        raise UtteranceError(utterance, path, "visual_path", "an existing per-frame CSV file")
    try:
        skip, sep = _locate_header(path)
        df = pd.read_csv(
            path,
            sep=sep,
            skiprows=skip,
            skipinitialspace=True,
            encoding="utf-8-sig",
            encoding_errors="replace",
            low_memory=False,
        )
    except Exception as exc:  # noqa: BLE001 - pandas: EmptyDataError, ParserError, ...; never echo the text
        raise UtteranceError(
            utterance, path, "visual_path", f"a readable per-frame CSV: {read_error_reason(exc)}"
        ) from None
    df.columns = [str(col).strip() for col in df.columns]
    kind = detect_kind(list(df.columns))
    if (
        kind is None
    ):  # the header's names could be anything (a text file's first line): count them only
        raise UtteranceError(
            utterance,
            path,
            "visual_path columns",
            HEADER_EXPECTED,
            f"got a header of {len(df.columns)} columns, none of them recognised",
        )
    if c.profile == "auto":
        wanted = columns_for(kind, list(df.columns))
    else:
        layout, wanted = PROFILES[c.profile]
        if kind != layout:
            raise UtteranceError(
                utterance,
                path,
                "visual_path",
                f"{_a(layout)} file for profile {c.profile}",
                f"got {_a(kind)} file",
            )
        missing = [col for col in wanted if col not in df.columns]
        if missing:
            raise UtteranceError(
                utterance,
                path,
                "visual_path columns",
                f"every column of profile {c.profile}",
                f"missing {len(missing)}: {missing[:8]}{'...' if len(missing) > 8 else ''}",
            )
    if len(df) == 0:
        raise UtteranceError(
            utterance, path, "visual_path", "at least one frame", "got a header only"
        )
    if kind == "openface":
        time_col, scale = "timestamp", 1.0
    else:  # Frametime (s, CMU-MOSI layout) when numeric, else iMotions' Timestamp (ms)
        has_frametime = (
            "Frametime" in df.columns and np.isfinite(_num(df, "Frametime", np.nan)).any()
        )
        time_col, scale = (
            ("Frametime", 1.0)
            if has_frametime or "Timestamp" not in df.columns
            else ("Timestamp", 1e-3)
        )
    df = select_faces(df, "frame" if "frame" in df.columns else time_col)
    feats = _floats(df[wanted])
    times = _num(df, time_col, np.nan) * scale
    if time_col == "Timestamp" and np.isfinite(times).any():
        times = times - np.nanmin(times)  # iMotions counts from the recording's start
    valid = ~np.isnan(feats).all(axis=1) & ~np.isnan(times)
    valid &= _num(df, "success", 1.0) > 0.5
    valid &= _num(df, "NoOfFaces", 1.0) > 0
    order = np.argsort(np.nan_to_num(times, nan=np.inf), kind="stable")
    times, feats, valid = times[order], feats[order], valid[order]
    keep = ~np.isnan(times)
    # a cell beyond any real feature's scale (inf, 1e400) is read as missing, like text: 0, not an
    # inf that would poison the store's finite-feature check later (found by the fuzz campaign)
    feats = np.where(np.abs(feats) <= 1e15, feats, np.nan)
    return {
        "times": times[keep],
        "features": np.nan_to_num(feats[keep]).astype(np.float32),
        "valid": valid[keep],
        "kind": np.array(kind),
        "names": np.array(wanted, dtype=str),
    }


def pool_to_words(
    frames: dict[str, np.ndarray],
    *,
    timings: list[tuple[str, float, float]] | None = None,
    n_words: int = 0,
    duration: float | None = None,
    max_words: int = 50,
) -> tuple[np.ndarray, np.ndarray, str]:
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


def summarize_columns(layout: str, cols: list[str]) -> str:
    """``gaze_0_x..gaze_angle_y (8), pose_Tx..pose_Rz (6)``: a family's columns (named when 3 or
    fewer)."""
    runs: list[list[str]] = []
    last = None
    for c in cols:
        key = feature_key(layout, c)
        if key is None:
            family = c
        elif layout == "openface":
            family = {0: "gaze", 1: "gaze", 2: "pose"}.get(key[0], key[:2])
        else:
            family = key[:2]
        if runs and family == last:
            runs[-1].append(c)
        else:
            runs.append([c])
        last = family
    return ", ".join(", ".join(r) if len(r) <= 3 else f"{r[0]}..{r[-1]} ({len(r)})" for r in runs)


def _suggest_profile(a: set[str], b: set[str]) -> str | None:
    fits = [
        (len(cols), name)
        for name, (_, cols) in PROFILES.items()
        if set(cols) <= a and set(cols) <= b
    ]
    return max(fits)[1] if fits else None


def check_agreement(
    layouts: dict[str, tuple[str, tuple[str, ...], Path]],
) -> tuple[str | None, list[str]]:
    """The one (kind, feature columns) every file has; ``DataError`` naming two files that
    differ."""
    if not layouts:
        return None, []
    groups = Counter((kind, names) for kind, names, _ in layouts.values())
    (ref_kind, ref_names), _ = groups.most_common(1)[0]
    if len(groups) == 1:
        return ref_kind, list(ref_names)
    ref_path = next(p for k, n, p in layouts.values() if (k, n) == (ref_kind, ref_names))
    kind, names, path = next(v for v in layouts.values() if (v[0], v[1]) != (ref_kind, ref_names))
    lacks = [n for n in ref_names if n not in set(names)]
    adds = [n for n in names if n not in set(ref_names)]
    parts = [
        f"{verb} {len(cols)}: {summarize_columns(kind, cols)}"
        for verb, cols in (("lacks", lacks), ("adds", adds))
        if cols
    ]
    differs = (
        f"it is {_a(kind)} file, {ref_path} is {_a(ref_kind)} file"
        if kind != ref_kind
        else "it " + " and ".join(parts)
    )
    hint = _suggest_profile(set(names), set(ref_names))
    hint = f"--visual-profile {hint}" if hint else "files of one layout"
    raise DataError(
        path,
        "visual_path columns",
        f"the same feature columns as every other visual file of the manifest, e.g. {ref_path} "
        f"({len(groups)} different column sets; use {hint}); {differs}",
    )


def header_columns(path: str | Path) -> tuple[str, tuple[str, ...]] | None:
    """``(kind, feature columns)`` from a file's header alone; None when it has no usable header."""
    import pandas as pd

    try:
        skip, sep = _locate_header(Path(path))
        cols = pd.read_csv(
            path,
            sep=sep,
            skiprows=skip,
            nrows=0,
            skipinitialspace=True,
            encoding="utf-8-sig",
            encoding_errors="replace",
        ).columns
    except Exception:  # noqa: BLE001 - extraction reports the unreadable file against its utterance
        return None
    cols = [str(c).strip() for c in cols]
    kind = detect_kind(cols)
    return (kind, tuple(columns_for(kind, cols))) if kind else None


def preflight_visual(utts, config: VisualConfig | None = None) -> None:
    """``check_agreement`` on headers only (cheap), so a CLI can refuse before any extraction
    runs."""
    if (config or VisualConfig()).profile != "auto":
        return
    layouts = {}
    for u in utts:
        if u.visual is not None and is_file(u.visual) and (found := header_columns(u.visual)):
            layouts[u.id] = (*found, Path(u.visual))
    check_agreement(layouts)


def extract_visual_batch(
    utts,
    config: VisualConfig | None = None,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Parse each file (cached by the file's sha256 + config) -> entries, failures, stats, columns.

    Entries hold ``times``, ``features``, ``valid``, ``kind``, ``names``. Under ``auto`` all parsed
    files must share one column set (``check_agreement``). ``manifest_config`` records the choice.
    """
    from msaflow.feature_store.extract import failure_record
    from msaflow.feature_store.extract.cache import FeatureCache
    from msaflow.feature_store.parquet_io import file_sha256

    c = config or VisualConfig()
    cache = FeatureCache(NAME, VERSION, c.cache_config(), root=cache_dir)
    entries, failures, layouts = {}, [], {}
    for u in utts:
        try:
            if not is_file(u.visual):
                raise UtteranceError(
                    u.id, u.visual, "visual_path", "an existing per-frame CSV file"
                )
            key = cache.key(file_sha256(u.visual))
            entry = cache.get(key)  # None when absent or torn
            if entry is None or "names" not in entry:
                entry = read_visual_csv(u.visual, c, utterance=u.id)
                cache.put(key, entry)
            layouts[u.id] = (
                str(entry["kind"]),
                tuple(str(n) for n in entry["names"]),
                Path(u.visual),
            )
            entries[u.id] = str(cache.path(key))
        except UtteranceError as exc:
            failures.append(failure_record(exc, NAME))
    kind, names = check_agreement(layouts)
    choice = (
        f"profile {c.profile}"
        if c.profile != "auto"
        else "auto: the feature columns of the files (every file has the same set)"
    )
    manifest_config = {
        "kind": kind,
        "profile": c.profile,
        "column_choice": choice,
        "feature_names": names,
        "face_selection": FACE_SELECTION,
        "failed_frames": FAILED_FRAMES,
    }
    return {
        "entries": entries,
        "failures": failures,
        "cache": cache.stats(),
        "kind": kind,
        "profile": c.profile,
        "feature_names": names,
        "manifest_config": manifest_config,
    }
