"""Feature extraction from raw inputs (text, WAV audio, per-frame facial CSVs) into a feature store.

Submodules: ``text`` (transformer encoder pooled to words), ``audio`` (COVAREP-style frame features
with librosa), ``visual`` (OpenFace 1.x/2.x CSVs, iMotions FACET exports; column profiles),
``alignment`` (word spans -> frames), ``cache`` (per-input content-hashed cache), ``cli``
(``msaflow features``). The Prefect flow lives in ``flows/features.py``. This module stays
import-light.
"""

from __future__ import annotations

from pathlib import Path

from msaflow.feature_store.extract.paths import is_file

try:  # the store package's error type, when it is importable
    from msaflow.feature_store import DataError
except ImportError:  # pragma: no cover - only while feature_store/__init__.py is being written

    class DataError(ValueError):  # type: ignore[no-redef]
        def __init__(self, path, field: str, expected: str):
            self.path, self.field, self.expected = path, field, expected
            super().__init__(f"{path}: {field}: expected {expected}")


class UtteranceError(DataError):
    """One utterance's input is bad; the batch goes on without it."""

    def __init__(
        self, utterance: str, path: str | Path | None, field: str, expected: str, detail: str = ""
    ):
        self.utterance = utterance
        self.detail = detail
        self.file = path
        super().__init__(path if path is not None else f"utterance {utterance}", field, expected)
        self.args = (self.message,)

    @property
    def message(self) -> str:
        where = f" ({self.file})" if self.file is not None else ""
        extra = f": {self.detail}" if self.detail else ""
        return f"utterance {self.utterance!r}{where}: {self.field}: expected {self.expected}{extra}"

    def __str__(self) -> str:
        return self.message


__all__ = ["DataError", "UtteranceError", "read_error_reason"]


def read_error_reason(exc: BaseException) -> str:
    """What went wrong reading a file, without any of its contents.

    Parser and codec messages can quote the bytes or text they choked on, and a manifest may point
    at any readable file (``/etc/hostname``); errors land in the store manifest, so they name the
    problem and at most a line number, never what the file holds.
    """
    import re

    if isinstance(exc, UnicodeDecodeError):
        return f"text in UTF-8; byte {exc.start} is not"
    name = type(exc).__name__
    if name == "EmptyDataError":
        return "a non-empty file"
    if name == "ParserError":
        m = re.search(r"\bline (\d+)|\brow (\d+)", str(exc))
        where = f" (near line {m.group(1) or m.group(2)})" if m else ""
        return f"well-formed CSV rows{where}"
    return f"a readable file ({name})"


# --------------------------------------------------------------------------------------------------
# The extraction manifest (CSV, one row per utterance)
# --------------------------------------------------------------------------------------------------
MANIFEST_COLUMNS = ("id", "text", "audio_path", "visual_path", "label", "split")
OPTIONAL_COLUMNS = ("words", "timings_path", "video_id", "clip_id")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "val": "valid", "test": "test"}


class Utterance:
    """One manifest row, paths resolved against the manifest's folder."""

    __slots__ = ("id", "text", "words", "audio", "visual", "label", "split", "video_id", "clip_id")

    def __init__(
        self,
        id: str,
        text: str | None,
        words,
        audio: Path | None,
        visual: Path | None,
        label: float,
        split: str,
        video_id: str | None = None,
        clip_id: str | None = None,
    ):
        self.id, self.text, self.words = id, text, words
        self.audio, self.visual, self.label, self.split = audio, visual, label, split
        self.video_id, self.clip_id = video_id, clip_id

    def word_list(self) -> list[str]:
        if self.words:
            return [w for w, _, _ in self.words]
        return str(self.text or "").split()

    def __repr__(self) -> str:
        return f"Utterance({self.id!r}, split={self.split!r})"


def read_user_csv(path: Path, field: str, what: str, **read_csv_args: object):
    """A user's CSV as strings (no NA guessing), with stripped column names; a missing or unreadable
    file is a DataError naming ``field``, whose reason never quotes the file."""
    import pandas as pd

    if not is_file(path):
        raise DataError(path, field, f"an existing {what}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, **read_csv_args)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types; the reason never quotes the file
        raise DataError(path, field, f"a readable CSV: {read_error_reason(exc)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _cell(row, col: str) -> str | None:
    if col not in row.index:
        return None
    value = row[col]
    if value is None or (isinstance(value, float) and value != value):
        return None
    value = str(value)
    return value if value.strip() else None


def _read_timings_csv(path: Path, uid: str):
    import numpy as np
    import pandas as pd

    if not is_file(path):
        raise UtteranceError(
            uid, path, "timings_path", "an existing CSV with columns word,start,end"
        )
    try:
        df = pd.read_csv(path, skipinitialspace=True, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types; the reason never quotes the file
        raise UtteranceError(uid, path, "timings_path", read_error_reason(exc)) from None
    df.columns = [str(c).strip() for c in df.columns]
    if not {"word", "start", "end"} <= set(df.columns):
        raise UtteranceError(
            uid,
            path,
            "timings_path columns",
            "a header with word, start, end",
            f"got {len(df.columns)} columns without them",
        )
    try:
        start = pd.to_numeric(df["start"]).to_numpy(float)
        end = pd.to_numeric(df["end"]).to_numpy(float)
    except (ValueError, TypeError, OverflowError):
        raise UtteranceError(uid, path, "timings_path start/end", "numbers (seconds)") from None
    if not (np.isfinite(start).all() and np.isfinite(end).all() and (end >= start).all()):
        raise UtteranceError(uid, path, "timings_path start/end", "finite times with end >= start")
    return [(str(w), float(a), float(b)) for w, a, b in zip(df["word"], start, end, strict=True)]


def check_label(value: str, label_range: tuple[float, float] | None) -> tuple[float | None, str]:
    """``(label, "")`` when ``value`` is a finite number inside ``label_range``, else
    ``(None, why)``.

    ``why`` describes the value (NaN, inf, out of range) without quoting text from the file.
    """
    try:
        label = float(str(value).strip())
    except ValueError:
        return None, "got text that is not a number" if str(value).strip() else "got an empty cell"
    if label != label:
        return None, "got NaN"
    if label in (float("inf"), float("-inf")):
        return None, f"got {label}"
    if label_range is not None and not (label_range[0] <= label <= label_range[1]):
        return None, f"got {label:g}, outside the range"
    return label, ""


def read_extraction_manifest(
    path: str | Path, label_range: tuple[float, float] | None = (-3.0, 3.0)
) -> tuple[list[Utterance], dict[str, bool], list[dict]]:
    """Parse the manifest -> (utterances, modalities present, row failures).

    A modality is present when its column exists and at least one row fills it; a row that leaves a
    present modality empty fails (it cannot be stored without it). ``text`` is present when the
    column exists. A row whose label is not a finite number inside ``label_range`` (the store's
    range; None: any finite number) fails like any other broken row instead of aborting the write
    later.
    """
    import numpy as np

    from msaflow.feature_store.extract.alignment import parse_words

    path = Path(path)
    df = read_user_csv(path, "--manifest", "CSV manifest", skipinitialspace=True)
    missing = [c for c in ("id", "label", "split") if c not in df.columns]
    if missing:
        raise DataError(
            path,
            "columns",
            f"id, label, split (+ text, audio_path, visual_path); missing {missing}",
        )
    if df["id"].duplicated().any():
        # positions, not index labels: pandas turns a first column into the index when rows are too
        # long
        rows = [
            int(i) + 2 for i in np.flatnonzero(df["id"].duplicated().to_numpy())[:5]
        ]  # +2: header, 1-based
        raise DataError(path, "id", f"unique utterance ids; lines {rows} repeat an earlier id")
    root = path.resolve().parent
    present = {
        "text": "text" in df.columns,
        "audio": "audio_path" in df.columns and (df["audio_path"].str.strip() != "").any(),
        "vision": "visual_path" in df.columns and (df["visual_path"].str.strip() != "").any(),
    }
    if not any(present.values()):
        raise DataError(path, "columns", "at least one of text, audio_path, visual_path")
    utts, failures = [], []
    for _, row in df.iterrows():
        uid = str(row["id"]).strip()
        try:
            label, why = check_label(row["label"], label_range)
            if label is None:
                expected = "a finite number" + (
                    f" in [{label_range[0]:g}, {label_range[1]:g}]" if label_range else ""
                )
                raise UtteranceError(uid, path, "label", expected, why)
            split = SPLIT_ALIASES.get(str(row["split"]).strip().lower())
            if split is None:
                raise UtteranceError(uid, path, "split", "train, valid, dev, val or test")
            words = None
            if (raw := _cell(row, "words")) is not None:
                try:
                    words = parse_words(raw)
                except (ValueError, TypeError) as exc:
                    # json's and parse_words' messages give positions only, never the cell's text
                    raise UtteranceError(
                        uid,
                        path,
                        "words",
                        "JSON [[word, start_s, end_s], ...]",
                        str(exc).splitlines()[0][:120],
                    ) from None
            elif (tp := _cell(row, "timings_path")) is not None:
                words = _read_timings_csv(root / tp, uid)
            paths = {}
            for mod, col in (("audio", "audio_path"), ("vision", "visual_path")):
                cell = _cell(row, col)
                if present[mod] and cell is None:
                    raise UtteranceError(uid, None, col, f"a path (other rows have {mod})")
                paths[mod] = (root / cell.strip()) if cell else None
            utts.append(
                Utterance(
                    uid,
                    _cell(row, "text"),
                    words,
                    paths["audio"],
                    paths["vision"],
                    label,
                    split,
                    _cell(row, "video_id"),
                    _cell(row, "clip_id"),
                )
            )
        except UtteranceError as exc:
            failures.append(failure_record(exc, "manifest"))
    return utts, present, failures


def failure_record(exc: BaseException, stage: str, utterance: str | None = None) -> dict:
    uid = getattr(exc, "utterance", utterance)
    return {"id": str(uid), "stage": stage, "error": str(exc)[:500]}
