"""What a dataset is, before and after it is on disk: ``SplitData`` (one split in memory),
``Manifest`` (``manifest.json``), the format's constants, and the checks every split passes before
anything is written (``check_split``, ``check_finite``, ``check_splits``).

The Parquet side is ``feature_store.parquet_io``; what a write may replace or delete is
``feature_store.store_safety``; ``feature_store.schema`` describes the format and re-exports all
three.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msaflow.errors import DataError
from msaflow.modalities import MODALITIES

SCHEMA_VERSION = 2  # 2: sequences as fixed-size binary (1: nested fixed-size lists)
SPLITS = ("train", "valid", "test")
DATA_KINDS = ("sentiment", "emotion", "depression")
LABEL_KINDS = ("regression", "classification")
MANIFEST = "manifest.json"
# Largest |feature| accepted. Real features (BERT, COVAREP, FACET, OpenFace) stay below ~1e4;
# float32 squares overflow near 1.8e19, so a value like 3e38 is finite yet turns standardisation and
# the first loss into nan. 1e15 leaves six orders of magnitude of headroom on both sides.
FEATURE_ABS_MAX = 1e15
# Split names become file names: plain names only, so nothing is written outside the store.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    try:
        return _is_number(v) and abs(float(v)) < float("inf")
    except OverflowError:  # an int past float range
        return False


def _brief(v: Any, limit: int = 80) -> str:
    """A value from a user's file, on one short line."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class SplitData:
    """One split in memory. Features are float32 (N, T, d); lengths int64 (N,)."""

    ids: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    class_labels: np.ndarray | None = None
    video_ids: np.ndarray | None = None
    clip_ids: np.ndarray | None = None
    texts: np.ndarray | None = None
    subjects: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> SplitData:
        """Rows ``index`` of this split (for subject folds); arrays are copied."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return SplitData(
            ids=self.ids[index],
            labels=self.labels[index],
            features={m: v[index] for m, v in self.features.items()},
            lengths={m: v[index] for m, v in self.lengths.items()},
            class_labels=pick(self.class_labels),
            video_ids=pick(self.video_ids),
            clip_ids=pick(self.clip_ids),
            texts=pick(self.texts),
            subjects=pick(self.subjects),
        )


@dataclass
class Manifest:
    name: str
    source: str
    data_kind: str
    label_kind: str
    label_range: tuple[float, float]
    modalities: dict[str, dict[str, int]]  # {"text": {"dim": 768, "seq_len": 50}, ...}
    splits: dict[str, int]
    files: dict[
        str, dict[str, Any]
    ]  # {"train": {"file": "train.parquet", "sha256": ..., "bytes": ...}}
    source_sha256: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    cleaning: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1
    class_names: list[str] | None = None
    oracle: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "task": self.data_kind,
            "label_kind": self.label_kind,
            "label_range": list(self.label_range),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "modalities": self.modalities,
            "splits": self.splits,
            "cleaning": self.cleaning,
            "config": self.config,
            "oracle": self.oracle,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> Manifest:
        # Every field is type-checked here: the loaders index, unpack and compare these values, and
        # a manifest is user-supplied bytes (issue 20's fuzzing found each unchecked field
        # crashing).
        if not isinstance(d, Mapping):
            raise DataError(path, "json", f"a JSON object (the manifest), got {type(d).__name__}")
        required = (
            "name",
            "source",
            "task",
            "label_kind",
            "label_range",
            "modalities",
            "splits",
            "files",
        )
        for key in required:
            if key not in d:
                raise DataError(
                    path, key, f"a manifest field {key!r} (schema version {SCHEMA_VERSION})"
                )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise DataError(
                path,
                "schema_version",
                f"{SCHEMA_VERSION}, got {_brief(version)}: re-create the store with this msaflow "
                "(msaflow data synth / ingest; sources are never modified)",
            )
        for key in ("name", "source", "task"):
            if not isinstance(d[key], str):
                raise DataError(path, key, f"a string, got {_brief(d[key])}")
        if d["label_kind"] not in LABEL_KINDS:
            raise DataError(
                path, "label_kind", f"one of {LABEL_KINDS}, got {_brief(d['label_kind'])}"
            )
        lr = d["label_range"]
        if not (
            isinstance(lr, list)
            and len(lr) == 2
            and all(_is_finite(v) for v in lr)
            and lr[0] <= lr[1]
        ):
            raise DataError(
                path, "label_range", f"[low, high], two finite numbers, got {_brief(lr)}"
            )
        mods = d["modalities"]
        if (
            not isinstance(mods, dict)
            or not mods
            or not set(mods) <= set(MODALITIES)
            or not all(
                isinstance(v, dict)
                and all(_is_int(v.get(k)) and v[k] > 0 for k in ("dim", "seq_len"))
                for v in mods.values()
            )
        ):
            raise DataError(
                path,
                "modalities",
                'an object like {"text": {"dim": 768, "seq_len": 50}} '
                f"with modalities among {MODALITIES}",
            )
        if not isinstance(d["splits"], dict) or not all(
            _is_int(v) and v >= 0 for v in d["splits"].values()
        ):
            raise DataError(path, "splits", "an object mapping split names to row counts")
        files = d["files"]
        if not isinstance(files, dict):
            raise DataError(path, "files", "an object mapping split names to their files")
        for split, entry in files.items():
            fname = entry.get("file") if isinstance(entry, dict) else None
            # Confined to the store: a plain file name, so no absolute path and no '..' can escape
            # it.
            if not isinstance(fname, str) or not _PLAIN_NAME.fullmatch(fname):
                raise DataError(
                    path,
                    f"files.{split}.file",
                    f"a plain file name inside the store directory, got {_brief(fname)}",
                )
            for key, ok in (
                ("sha256", lambda v: isinstance(v, str)),
                ("crc32", lambda v: isinstance(v, str)),
                ("bytes", lambda v: _is_int(v) and v >= 0),
            ):
                if key in entry and not ok(entry[key]):
                    raise DataError(
                        path,
                        f"files.{split}.{key}",
                        f"a {'size in bytes' if key == 'bytes' else 'hex digest'}, "
                        f"got {_brief(entry[key])}",
                    )
        for key, types in (
            ("config", dict),
            ("cleaning", dict),
            ("oracle", dict),
            ("source_sha256", str),
        ):
            if d.get(key) is not None and not isinstance(d[key], types):
                raise DataError(
                    path,
                    key,
                    f"{'an object' if types is dict else 'a string'} or null, got {_brief(d[key])}",
                )
        num_classes = d.get("num_classes", 1)
        if not _is_int(num_classes) or num_classes < 1:
            raise DataError(path, "num_classes", f"an integer >= 1, got {_brief(num_classes)}")
        names = d.get("class_names")
        if names is not None and not (
            isinstance(names, list) and all(isinstance(c, str) for c in names)
        ):
            raise DataError(path, "class_names", f"a list of strings or null, got {_brief(names)}")
        return cls(
            name=d["name"],
            source=d["source"],
            data_kind=d["task"],
            label_kind=d["label_kind"],
            label_range=(float(lr[0]), float(lr[1])),
            modalities=mods,
            splits=d["splits"],
            files=files,
            source_sha256=d.get("source_sha256"),
            config=d.get("config") or {},
            cleaning=d.get("cleaning") or {},
            num_classes=num_classes,
            class_names=names,
            oracle=d.get("oracle"),
            schema_version=version,
        )

    @property
    def content_hash(self) -> str:
        """Identifies the data: it covers every file's sha256 and the whole manifest."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def input_spec(self) -> dict[str, Any]:
        """The model-facing shape of the data (``models.base.InputSpec`` fields)."""
        dims = {m: int(self.modalities.get(m, {}).get("dim", 0)) for m in MODALITIES}
        seq = max((int(v["seq_len"]) for v in self.modalities.values()), default=0)
        return {
            "text_dim": dims["text"],
            "audio_dim": dims["audio"],
            "vision_dim": dims["vision"],
            "seq_len": seq,
            "head": self.label_kind,
            "num_classes": int(self.num_classes),
        }


def read_manifest(path: str | Path) -> Manifest:
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DataError(root, MANIFEST, "a feature-store directory holding manifest.json")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(mpath, "json", f"valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(mpath, "json", "valid JSON nested less deeply") from None
    return Manifest.from_dict(data, mpath)


# --------------------------------------------------------------------------------------------------
# Validation of in-memory splits (before anything is written)
# --------------------------------------------------------------------------------------------------
def check_split(
    name: str,
    split: SplitData,
    where: str | Path,
    label_kind: str,
    label_range: tuple[float, float],
    num_classes: int,
) -> None:
    n = len(split.ids)
    if n == 0:
        raise DataError(where, f"{name}", "a non-empty split (0 rows)")
    if not split.features:
        raise DataError(where, f"{name}.features", "at least one modality of text, audio, vision")
    for m, x in split.features.items():
        if m not in MODALITIES:
            raise DataError(where, f"{name}.{m}", f"a modality in {MODALITIES}")
        if x.ndim != 3:
            raise DataError(where, f"{name}.{m}", f"a rank-3 (N, T, d) array, got shape {x.shape}")
        if x.shape[0] != n:
            raise DataError(where, f"{name}.{m}", f"N={n} rows like the ids, got {x.shape[0]}")
        lengths = split.lengths.get(m)
        if lengths is None or lengths.shape != (n,):
            raise DataError(where, f"{name}.{m}_len", f"one length per row ({n},)")
        if lengths.min() < 0 or lengths.max() > x.shape[1]:
            raise DataError(where, f"{name}.{m}_len", f"lengths in [0, {x.shape[1]}]")
        check_finite(name, m, x, where)
    labels = np.asarray(split.labels)
    if labels.shape != (n,):
        raise DataError(
            where, f"{name}.label", f"one label per row ({n},), got shape {labels.shape}"
        )
    if not np.isfinite(labels).all():
        raise DataError(
            where,
            f"{name}.label",
            f"finite labels; {int((~np.isfinite(labels)).sum())} are NaN/inf",
        )
    lo, hi = label_range
    if labels.min() < lo or labels.max() > hi:
        raise DataError(
            where,
            f"{name}.label",
            f"labels in [{lo}, {hi}], got [{labels.min():.3g}, {labels.max():.3g}]",
        )
    if label_kind == "classification":
        cl = split.class_labels
        if cl is None or cl.shape != (n,):
            raise DataError(where, f"{name}.class_label", "one integer class per row")
        if cl.min() < 0 or cl.max() >= num_classes:
            raise DataError(where, f"{name}.class_label", f"classes in [0, {num_classes})")
    for attr in ("video_ids", "clip_ids", "texts", "subjects", "class_labels"):
        v = getattr(split, attr)
        if v is not None and (np.ndim(v) != 1 or len(v) != n):
            raise DataError(where, f"{name}.{attr}", f"{n} values like the ids, got {len(v)}")


def check_finite(name: str, modality: str, x: np.ndarray, where: str | Path) -> None:
    """Every feature finite and within ``FEATURE_ABS_MAX``; the error counts the bad values."""
    flat = x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1)
    step = max(1, (16 << 20) // max(flat.shape[1], 1))  # ~16M values at a time: bounded temporaries
    nonfinite = extreme = 0
    for start in range(0, flat.shape[0], step):
        chunk = flat[start : start + step]
        if chunk.size == 0:
            continue
        peak = np.max(np.abs(chunk))  # nan propagates: one pass on the (usual) clean path
        if np.isfinite(peak) and peak <= FEATURE_ABS_MAX:
            continue
        finite = np.isfinite(chunk)
        nonfinite += int(chunk.size - np.count_nonzero(finite))
        extreme += int(np.count_nonzero(np.abs(np.where(finite, chunk, 0)) > FEATURE_ABS_MAX))
    if nonfinite or extreme:
        raise DataError(
            where,
            f"{name}.{modality}_feat",
            f"finite features with |x| <= {FEATURE_ABS_MAX:g}; {nonfinite} are NaN/inf and "
            f"{extreme} exceed the bound (of {x.size})",
        )


def check_splits(
    splits: Mapping[str, SplitData], where: str | Path, *, allow_duplicate_ids: bool = False
) -> None:
    """Ids unique within each split and no id in two splits (the same utterance in train and test
    leaks the test set). ``allow_duplicate_ids`` is the explicit opt-out for sources known to
    repeat ids; it is recorded in the manifest (``cleaning.allow_duplicate_ids``)."""
    if allow_duplicate_ids:
        return
    seen: dict[str, np.ndarray] = {}
    for name, split in splits.items():
        ids = np.asarray(split.ids).astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if len(dup):
            raise DataError(
                where,
                f"{name}.id",
                f"unique ids within the split; {len(dup)} ids occur more than once, "
                f"e.g. {str(dup[0])!r}",
            )
        for other, other_ids in seen.items():
            both = np.intersect1d(uniq, other_ids, assume_unique=True)
            if len(both):
                raise DataError(
                    where,
                    f"{name}.id",
                    f"ids not also in split {other!r} (leakage); {len(both)} ids are in "
                    f"both {other} and {name}, e.g. {str(both[0])!r}",
                )
        seen[name] = uniq
