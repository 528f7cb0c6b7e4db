"""The on-disk dataset: ``manifest.json`` plus one Parquet file per split.

Each Parquet row is one utterance: ``id``, ``video_id``, ``clip_id``, optional ``text`` and
``subject``, ``label`` (float32), optional ``class_label`` (int64), one column per modality
(``text_feat``, ``audio_feat``, ``vision_feat``) holding the (T, d) float32 sequence as a nested
Arrow fixed-size binary value of T*d little-endian float32 (the shape is in the field metadata and
the manifest), and per-modality lengths (``text_len`` ...).

Why fixed-size binary and not a nested fixed-size list: Parquet stores lists with repetition and
definition levels for every float, and decoding those ran 5-8x slower than ``pickle.load`` here
(0.12-0.18 GB/s); one opaque value per row decodes at memory speed (``bench/feature_store.py``).

Loading is vectorised: each row group's value buffer is viewed as numpy and copied once into a
preallocated (N, T, d) array, so peak memory stays near the arrays' own size. The file is checked
against the manifest's CRC-32 in a second thread while the row groups decode (``validate_dataset``
checks the sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from msaflow.atomic import writer_tag
from msaflow.errors import DataError

SCHEMA_VERSION = 2  # 2: sequences as fixed-size binary (1: nested fixed-size lists)
MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")
TASKS = ("sentiment", "emotion", "depression")
LABEL_KINDS = ("regression", "classification")
MANIFEST = "manifest.json"
ROW_GROUP_BYTES = 64 << 20  # per modality column; bounds the loader's transient memory
# Largest |feature| accepted. Real features (BERT, COVAREP, FACET, OpenFace) stay below ~1e4;
# float32 squares overflow near 1.8e19, so a value like 3e38 is finite yet turns standardisation and
# the first loss into nan. 1e15 leaves six orders of magnitude of headroom on both sides.
FEATURE_ABS_MAX = 1e15
# Split names become file names: plain names only, so nothing is written outside the store.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# A temporary directory is stale when its writer is gone (same host, dead pid) or this old.
STALE_AFTER_S = 24 * 3600


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
    task: str
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
            "task": self.task,
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
            task=d["task"],
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
            "task": self.label_kind,
            "num_classes": int(self.num_classes),
        }


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


# --------------------------------------------------------------------------------------------------
# Writing (atomic: temporary directory, then rename)
# --------------------------------------------------------------------------------------------------
def _seq_array(x: np.ndarray) -> pa.Array:
    """(n, T, d) float32 -> FixedSizeBinary(T*d*4), one value per row, without a per-row loop."""
    n, t, d = x.shape
    raw = np.ascontiguousarray(x, dtype="<f4")  # (n, T, d)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(t * d * 4), n, [None, pa.py_buffer(raw)])


def _strings(values: np.ndarray | None, n: int, default: Iterable[str] | None = None) -> pa.Array:
    if values is None:
        values = np.asarray(list(default) if default is not None else [""] * n)
    return pa.array(np.asarray(values).astype(str).tolist(), type=pa.string())


def _rows_per_group(split: SplitData) -> int:
    widest = max(x.shape[1] * x.shape[2] * 4 for x in split.features.values())
    return max(1, ROW_GROUP_BYTES // max(widest, 1))


def _write_split(path: Path, split: SplitData) -> None:
    n = len(split)
    video = split.video_ids if split.video_ids is not None else split.ids
    clip = split.clip_ids if split.clip_ids is not None else np.arange(n).astype(str)
    step = _rows_per_group(split)
    writer = None
    try:
        for start in range(0, n, step):
            sl = slice(start, min(n, start + step))
            cols: dict[str, pa.Array] = {
                "id": _strings(split.ids[sl], 0),
                "video_id": _strings(np.asarray(video)[sl], 0),
                "clip_id": _strings(np.asarray(clip)[sl], 0),
                "label": pa.array(np.asarray(split.labels[sl], dtype=np.float32)),
            }
            if split.texts is not None:
                cols["text"] = _strings(split.texts[sl], 0)
            if split.subjects is not None:
                cols["subject"] = _strings(split.subjects[sl], 0)
            if split.class_labels is not None:
                cols["class_label"] = pa.array(np.asarray(split.class_labels[sl], dtype=np.int64))
            for m in MODALITIES:
                if m in split.features:
                    cols[f"{m}_feat"] = _seq_array(split.features[m][sl])
                    cols[f"{m}_len"] = pa.array(np.asarray(split.lengths[m][sl], dtype=np.int64))
            table = pa.table(cols)
            table = table.replace_schema_metadata({"msaflow.schema_version": str(SCHEMA_VERSION)})
            for m in MODALITIES:
                if m in split.features:
                    i = table.schema.get_field_index(f"{m}_feat")
                    shape = ",".join(map(str, split.features[m].shape[1:]))
                    table = table.set_column(
                        i,
                        table.schema.field(i).with_metadata({"shape": shape, "dtype": "<f4"}),
                        table.column(i),
                    )
            if writer is None:
                # Float sequences barely compress; plain, uncompressed pages decode at memcpy speed.
                feat_cols = [c for c in table.column_names if c.endswith("_feat")]
                writer = pq.ParquetWriter(
                    path,
                    table.schema,
                    compression={
                        c: ("NONE" if c in feat_cols else "ZSTD") for c in table.column_names
                    },
                    use_dictionary=["id", "video_id", "clip_id", "subject"],
                    write_statistics=False,
                )
            writer.write_table(table, row_group_size=step)
    finally:
        if writer is not None:
            writer.close()


def file_sha256(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_crc32(path: str | Path, chunk: int = 16 << 20) -> str:
    """CRC-32 (2.4x faster than sha256 here): the per-load check that a file was not changed."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dataset(
    out_dir: str | Path,
    splits: Mapping[str, SplitData],
    *,
    name: str,
    source: str,
    task: str = "sentiment",
    label_kind: str = "regression",
    label_range: tuple[float, float] = (-3.0, 3.0),
    source_sha256: str | None = None,
    config: Mapping[str, Any] | None = None,
    num_classes: int = 1,
    class_names: list[str] | None = None,
    cleaning: Mapping[str, Any] | None = None,
    oracle: Mapping[str, Any] | None = None,
    force: bool = False,
    allow_duplicate_ids: bool = False,
) -> Manifest:
    """Validate ``splits`` and write the store atomically; the old store survives any failure.

    ``out_dir`` may be new, empty, or a store msaflow wrote (replaced; anything else in that folder
    is kept). Any other non-empty directory is refused unless ``force``, which adds the store's
    files beside what is there and refuses if one of their names is taken: msaflow deletes and
    overwrites only files it recognises as a store's (``manifest.json`` and the split files it
    lists). Stale temporary directories of earlier killed writes to ``out_dir`` are cleaned up
    first.
    """
    out = Path(os.path.abspath(out_dir))
    if out.is_symlink():
        out = out.resolve()  # write where the link points; never replace the user's link
    if task not in TASKS:
        raise DataError(out, "task", f"one of {TASKS}, got {task!r}")
    if label_kind not in LABEL_KINDS:
        raise DataError(out, "label_kind", f"one of {LABEL_KINDS}, got {label_kind!r}")
    if not splits:
        raise DataError(out, "splits", "at least one split")
    for split_name in splits:
        if not _PLAIN_NAME.fullmatch(str(split_name)):
            raise DataError(
                out, "splits", f"plain split names (letters, digits, _ . -), got {split_name!r}"
            )
    mods = set(next(iter(splits.values())).features)
    for split_name, split in splits.items():
        check_split(split_name, split, out, label_kind, label_range, num_classes)
        if set(split.features) != mods:
            raise DataError(
                out, f"{split_name}.features", f"the same modalities in every split {sorted(mods)}"
            )
    check_splits(splits, out, allow_duplicate_ids=allow_duplicate_ids)
    cleaning = dict(cleaning or {})
    if allow_duplicate_ids:
        cleaning["allow_duplicate_ids"] = True  # validate_dataset honours the writer's opt-out
    modalities: dict[str, dict[str, int]] = {}
    for m in MODALITIES:
        if m in mods:
            shapes = {s.features[m].shape[1:] for s in splits.values()}
            if len(shapes) != 1:
                raise DataError(out, f"{m}_feat", f"one (T, d) across splits, got {sorted(shapes)}")
            t, d = shapes.pop()
            modalities[m] = {"dim": int(d), "seq_len": int(t)}

    new_names = {MANIFEST, *(f"{s}.parquet" for s in splits)}
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out)
    _plan(out, new_names, force)  # refuse before spending minutes on the write
    tmp = out.parent / f".{out.name}.tmp-{_writer_tag()}"
    _remove_store_files(tmp, None)  # our own leftover from this thread, if any
    tmp.mkdir()
    try:
        files = {}
        for split_name, split in splits.items():
            fname = f"{split_name}.parquet"
            _write_split(tmp / fname, split)
            files[split_name] = {
                "file": fname,
                "sha256": file_sha256(tmp / fname),
                "crc32": file_crc32(tmp / fname),
                "bytes": (tmp / fname).stat().st_size,
            }
        manifest = Manifest(
            name=name,
            source=source,
            task=task,
            label_kind=label_kind,
            label_range=(float(label_range[0]), float(label_range[1])),
            modalities=modalities,
            splits={k: len(v) for k, v in splits.items()},
            files=files,
            source_sha256=source_sha256,
            config=dict(config or {}),
            cleaning=cleaning,
            num_classes=int(num_classes),
            class_names=list(class_names) if class_names else None,
            oracle=dict(oracle) if oracle else None,
        )
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest.to_dict(), fh, indent=2, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _replace_dir(tmp, out, new_names, force)
    except BaseException:
        _remove_store_files(tmp, None)
        raise
    return manifest


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------------
# What msaflow may replace or delete: only files it recognises as a store's, and its own temporaries
# --------------------------------------------------------------------------------------------------
_writer_tag = writer_tag  # names a temporary directory after its writer (clean_stale_temporaries)


def store_file_names(directory: str | Path) -> set[str] | None:
    """The names in ``directory`` that make up a store msaflow wrote there (``manifest.json`` and
    the split files it lists, each a regular file), or None when it holds no manifest of ours.

    Ours means: valid JSON, an object with every field msaflow writes, an integer ``schema_version``
    (old versions count: they are replaced) and plain file names under ``files``."""
    root = Path(directory)
    mpath = root / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        return None
    try:
        d = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return None
    required = (
        "schema_version",
        "name",
        "source",
        "task",
        "label_kind",
        "label_range",
        "modalities",
        "splits",
        "files",
    )
    if (
        not isinstance(d, dict)
        or any(k not in d for k in required)
        or not isinstance(d["files"], dict)
        or not isinstance(d["schema_version"], int)
        or isinstance(d["schema_version"], bool)
    ):
        return None
    names = {MANIFEST}
    for entry in d["files"].values():
        fname = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(fname, str) or not _PLAIN_NAME.fullmatch(fname):
            return None
        p = root / fname
        if p.is_file() and not p.is_symlink():
            names.add(fname)
    return names


def check_target(
    out_dir: str | Path, split_names: Iterable[str] = SPLITS, *, force: bool = False
) -> None:
    """Raise the DataError ``write_dataset`` would raise for this target, before the costly work."""
    _plan(Path(os.path.abspath(out_dir)), {MANIFEST, *(f"{s}.parquet" for s in split_names)}, force)


def _plan(out: Path, new_names: set[str], force: bool) -> tuple[str, set[str]]:
    """How to write ``out``: ``("new" | "store" | "into", recognised store files)``, or
    DataError."""
    if not os.path.lexists(out):
        return "new", set()
    if not out.is_dir():
        raise DataError(
            out, "out", "a directory for the store (this path is a file); choose a fresh path"
        )
    entries = set(os.listdir(out))
    if not entries:
        return "new", set()  # an empty directory is replaced by the new one
    ours = store_file_names(out)
    if ours is not None:
        taken = sorted((entries - ours) & new_names)
        if taken:
            raise DataError(
                out,
                "out",
                f"room for the new store's files; {taken[0]!r} there is not the "
                "old store's and is never overwritten: move it, or choose a fresh path",
            )
        return "store", ours
    if not force:
        example = sorted(entries)[0]
        raise DataError(
            out,
            "out",
            f"an empty directory or a store msaflow wrote; it holds {len(entries)} "
            f"entries (e.g. {example!r}) and no msaflow manifest.json: choose a fresh path, or "
            "pass --force to add the store's files beside them (nothing is deleted)",
        )
    taken = sorted(entries & new_names)
    if taken:
        raise DataError(
            out,
            "out",
            f"--force adds files but never overwrites; {taken[0]!r} exists there "
            "and is not an msaflow store's: choose a fresh path",
        )
    return "into", set()


def _remove_store_files(directory: Path, names: set[str] | None) -> None:
    """Delete ``names`` (None: the files msaflow writes, manifest.json and *.parquet) from
    ``directory`` if they are regular files, then the directory if that left it empty."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        p = directory / entry
        mine = (
            entry in names
            if names is not None
            else (entry == MANIFEST or entry.endswith(".parquet"))
        )
        if mine and p.is_file() and not p.is_symlink():
            p.unlink()
    with contextlib.suppress(OSError):  # something else is in there: not ours to delete
        directory.rmdir()


def _move_new(src: Path, dst: Path) -> None:
    """Move without ever overwriting: a hard link fails if ``dst`` exists (rename would replace
    it)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise DataError(
            dst.parent,
            "out",
            f"{dst.name!r} to be free (it appeared during the write); nothing was overwritten",
        ) from None
    except OSError:  # no hard links on this filesystem
        if os.path.lexists(dst):
            raise DataError(
                dst.parent, "out", f"{dst.name!r} to be free; nothing was overwritten"
            ) from None
        os.rename(src, dst)
        return
    src.unlink()


def _carry_over(old: Path, out: Path, recognised: set[str]) -> None:
    """Move everything in ``old`` that is not the old store's into the new store directory
    ``out``."""
    for entry in os.listdir(old):
        if entry in recognised or os.path.lexists(out / entry):
            continue
        if (old / entry).is_dir() and not (old / entry).is_symlink():
            os.rename(old / entry, out / entry)
        else:
            _move_new(old / entry, out / entry)


def _replace_dir(tmp: Path, out: Path, new_names: set[str], force: bool) -> None:
    """Put the complete store in ``tmp`` at ``out``.

    New or empty target: one rename. A store of ours: ``out`` -> ``.old``, ``tmp`` -> ``out``, then
    what else was in the folder moves into the new one and only the old store's files are deleted
    (a kill between the renames leaves the old store at ``.old``; the next write puts it back).
    A foreign folder with ``force``: the files are hard-linked in, manifest last, never overwriting.
    """
    kind, recognised = _plan(out, new_names, force)  # again: the folder may have changed meanwhile
    if kind == "new":
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        return
    if kind == "into":
        moved = []
        try:
            for fname in sorted(new_names - {MANIFEST}) + [MANIFEST]:
                _move_new(tmp / fname, out / fname)
                moved.append(fname)
        except BaseException:
            for fname in moved:  # roll back only what this write added
                (out / fname).unlink(missing_ok=True)
            raise
        _fsync_dir(out)
        tmp.rmdir()
        return
    old = out.parent / f".{out.name}.old-{_writer_tag()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    _fsync_dir(out.parent)
    _carry_over(old, out, recognised)
    _remove_store_files(old, recognised)


def clean_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Clean what killed writes to ``out_dir`` left beside it; returns the directories handled.

    Only directories named like msaflow's own (``.NAME.tmp-HOST-PID-TID`` / ``.NAME.old-...``) whose
    writer is gone: same host and a dead pid (or a finished thread of this process), or older than
    ``STALE_AFTER_S`` (another host, or a reused pid). In them only msaflow's file names are deleted
    (``manifest.json``, ``*.parquet``); anything else stays. A ``.old`` directory is the previous
    store: put back at ``out_dir`` if nothing is there, else its other entries move into the store.
    """
    out = Path(os.path.abspath(out_dir))
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-([A-Za-z0-9.]+)-(\d+)-(\d+)")
    try:
        entries = sorted(os.listdir(out.parent))
    except OSError:
        return []
    host = _writer_tag().split("-")[0]
    handled = []
    for entry in entries:
        m = pattern.fullmatch(entry)
        path = out.parent / entry
        if not m or path.is_symlink() or not path.is_dir():
            continue
        kind, owner, pid, tid = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if owner == host and pid == os.getpid():
            gone = tid not in {t.ident for t in threading.enumerate()}
        else:
            gone = owner == host and not _pid_alive(pid)
        if not (gone or age > STALE_AFTER_S):
            continue
        if kind == "tmp":
            _remove_store_files(path, None)
        elif not os.path.lexists(out) and store_file_names(path) is not None:
            os.replace(path, out)
        else:
            recognised = store_file_names(path) or set()
            if out.is_dir():
                _carry_over(path, out, recognised)
            _remove_store_files(path, recognised)
        handled.append(path)
    return handled


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or unknown: assume alive
    return True


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
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


class _Hasher(threading.Thread):
    """A file's checksum in a background thread (zlib and hashlib release the GIL on large
    blocks)."""

    def __init__(self, path: Path, kind: str):
        super().__init__(daemon=True)
        self.path, self.kind, self.digest = path, kind, None

    def run(self) -> None:
        try:
            self.digest = file_sha256(self.path) if self.kind == "sha256" else file_crc32(self.path)
        except OSError:  # pragma: no cover - the reader reports the file
            self.digest = None


def _column_to_numpy(chunked: pa.ChunkedArray, out: np.ndarray, start: int) -> int:
    row = start
    per_row = int(np.prod(out.shape[1:]))
    for chunk in chunked.chunks:
        n = len(chunk)
        if chunk.null_count:
            raise ValueError("null sequences")
        if chunk.type.byte_width != per_row * 4:
            raise ValueError(
                f"values of {chunk.type.byte_width} bytes, expected {per_row * 4} for "
                f"{out.shape[1:]}"
            )
        flat = np.frombuffer(
            chunk.buffers()[1], dtype="<f4", count=n * per_row, offset=chunk.offset * per_row * 4
        )
        out[row : row + n] = flat.reshape((n, *out.shape[1:]))
        row += n
    return row


def _check_columns(
    schema: pa.Schema, manifest: Manifest, mods: list[str], fpath: Path, split: str, n: int
) -> None:
    """The split file's columns are the msaflow schema's, before anything is allocated or decoded:
    one column per name, the feature columns fixed-size binary of T*d*4 bytes stored in the file
    (msaflow writes them uncompressed, so N*T*d*4 bytes cannot exceed the file: no decompression
    bomb), ids and strings as strings, labels and lengths numeric without nulls."""
    names = schema.names
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(
            fpath, split, f"one column per name; {dup[0]!r} occurs {names.count(dup[0])} times"
        )
    types = {f.name: f.type for f in schema}
    size = fpath.stat().st_size

    def need(name: str, ok, what: str) -> None:
        if name not in types:
            raise DataError(fpath, f"{split}.{name}", f"a column {name!r} ({what})")
        if not ok(types[name]):
            raise DataError(fpath, f"{split}.{name}", f"{what}, got {types[name]}")

    for m in mods:
        width = manifest.modalities[m]["seq_len"] * manifest.modalities[m]["dim"] * 4
        need(
            f"{m}_feat",
            lambda t, w=width: pa.types.is_fixed_size_binary(t) and t.byte_width == w,
            f"fixed-size binary of T*d*4 = {width} bytes per row, as the manifest's modalities say",
        )
        if n * width > size:
            raise DataError(
                fpath,
                f"{split}.{m}_feat",
                f"{n} rows x {width} bytes stored in the file "
                f"({size} bytes): features are written uncompressed",
            )
        need(f"{m}_len", pa.types.is_integer, "integer lengths")
    need("id", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string ids")
    need("label", lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "numeric labels")
    for c in ("video_id", "clip_id", "text", "subject"):
        if c in types and not (pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])):
            raise DataError(fpath, f"{split}.{c}", f"strings, got {types[c]}")
    if "class_label" in types and not pa.types.is_integer(types["class_label"]):
        raise DataError(
            fpath, f"{split}.class_label", f"integer classes, got {types['class_label']}"
        )


def _check_digest(hasher: _Hasher | None, fpath: Path, entry: Mapping[str, Any]) -> None:
    if hasher is None:
        return
    hasher.join()
    if hasher.digest != entry.get(hasher.kind):
        raise DataError(
            fpath,
            hasher.kind,
            f"{entry.get(hasher.kind)} from the manifest (file changed after writing)",
        )


def load_split(
    path: str | Path,
    split: str,
    *,
    verify: bool | str = True,
    modalities: Iterable[str] | None = None,
    manifest: Manifest | None = None,
) -> SplitData:
    """Load one split as numpy arrays.

    ``verify``: ``True``/``"crc32"`` checks the file against the manifest's CRC-32 while decoding,
    ``"sha256"`` against its sha256 (slower), ``False`` skips the check.
    """
    root = Path(path)
    manifest = manifest or read_manifest(root)
    if split not in manifest.files:
        raise DataError(
            root / MANIFEST,
            f"files.{split}",
            f"a split named {split!r}; have {sorted(manifest.files)}",
        )
    entry = manifest.files[split]
    fpath = root / entry["file"]
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(fpath), real_root]) != real_root:
        raise DataError(
            root / MANIFEST,
            f"files.{split}.file",
            "a file inside the store directory (it links to a path outside)",
        )
    if not fpath.is_file():
        raise DataError(fpath, split, "the split's Parquet file listed in the manifest")
    if fpath.stat().st_size != entry.get("bytes", fpath.stat().st_size):
        raise DataError(
            fpath,
            "bytes",
            "the file the manifest was written with (size differs: changed after writing)",
        )
    kind = "sha256" if verify == "sha256" or "crc32" not in entry else "crc32"
    hasher = _Hasher(fpath, kind) if verify else None
    if hasher:
        hasher.start()
    mods = [m for m in (modalities or manifest.modalities) if m in manifest.modalities]
    try:
        pf = pq.ParquetFile(fpath, memory_map=False)  # mapped pages would count as resident memory
        n = pf.metadata.num_rows
        _check_columns(pf.schema_arrow, manifest, mods, fpath, split, n)
        feats = {
            m: np.empty(
                (n, manifest.modalities[m]["seq_len"], manifest.modalities[m]["dim"]),
                dtype=np.float32,
            )
            for m in mods
        }
        for m in mods:
            row = 0
            for g in range(pf.num_row_groups):
                row = _column_to_numpy(
                    pf.read_row_group(g, columns=[f"{m}_feat"]).column(0), feats[m], row
                )
            if row != n:
                raise ValueError(f"{m}_feat: {row} rows, expected {n}")
        names = set(pf.schema_arrow.names)
        small = [
            c
            for c in (
                "id",
                "video_id",
                "clip_id",
                "text",
                "subject",
                "label",
                "class_label",
                *(f"{m}_len" for m in mods),
            )
            if c in names
        ]
        meta = pf.read(columns=small)
        if meta.num_rows != n:
            raise ValueError(f"{meta.num_rows} rows in the small columns, expected {n}")

        def col(name: str, dtype=None):
            if name not in meta.column_names:
                return None
            arr = meta.column(name).to_numpy()
            return arr.astype(dtype) if dtype is not None else arr.astype(str)

        data = SplitData(
            ids=col("id"),
            labels=col("label", np.float32),
            features=feats,
            lengths={m: col(f"{m}_len", np.int64) for m in mods},
            class_labels=col("class_label", np.int64),
            video_ids=col("video_id"),
            clip_ids=col("clip_id"),
            texts=col("text"),
            subjects=col("subject"),
        )
    except DataError:
        _check_digest(hasher, fpath, entry)
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        _check_digest(hasher, fpath, entry)  # a changed file explains a parse failure best
        msg = " ".join(str(exc).split())[:200]
        raise DataError(
            fpath, split, f"a readable Parquet split of the msaflow schema ({msg})"
        ) from None
    _check_digest(hasher, fpath, entry)
    if n != manifest.splits.get(split, n):
        raise DataError(fpath, split, f"{manifest.splits[split]} rows as in the manifest, got {n}")
    return data


def load_dataset(
    path: str | Path,
    splits: Iterable[str] | None = None,
    *,
    verify: bool = True,
    shared: bool = False,
) -> tuple[Manifest, dict[str, SplitData]]:
    """The manifest and the named splits (default: all). ``shared``: see ``load_split_shared``."""
    manifest = read_manifest(path)
    names = list(splits) if splits is not None else list(manifest.files)
    if shared:
        return manifest, {s: load_split_shared(path, s, manifest=manifest) for s in names}
    return manifest, {s: load_split(path, s, verify=verify, manifest=manifest) for s in names}


_SHARED: dict[tuple[str, str, str], SplitData] = {}  # (store, split, checksum:mtime,size)
_SHARED_LOCK = threading.Lock()


def load_split_shared(
    path: str | Path, split: str, *, manifest: Manifest | None = None
) -> SplitData:
    """``load_split`` (verified), kept for the next caller in this process.

    The tasks of one pipeline (train, then evaluate, for every variant and seed) read the same
    store; loading and checking it once per process instead of once per task saves ~2 s a run on
    sim-mosi. Entries are keyed by the file's checksum, mtime and size, so a changed file is read
    (and checked) again, and only the most recently used store is kept (a MOSEI-sized split is GBs).
    The arrays are shared between callers:
    treat them as read-only (the engine only reads them, batches are copies).
    """
    root = Path(path).resolve()
    manifest = manifest or read_manifest(root)
    entry = manifest.files.get(split, {})
    fpath = root / str(entry.get("file", ""))
    stamp = (fpath.stat().st_mtime_ns, fpath.stat().st_size) if fpath.is_file() else None
    key = (
        str(root),
        split,
        f"{entry.get('sha256') or entry.get('crc32')}:{stamp}",
    )  # changed file -> reload
    with _SHARED_LOCK:
        if key not in _SHARED:
            data = load_split(root, split, manifest=manifest)
            for old in [k for k in _SHARED if k[0] != key[0] or k[1] == split]:
                del _SHARED[old]
            _SHARED[key] = data
        return _SHARED[key]


def validate_dataset(path: str | Path) -> Manifest:
    """Full check: manifest fields, checksums, shapes, labels, finite features, unique ids and no id
    in two splits (unless the writer opted out, ``cleaning.allow_duplicate_ids``). Returns the
    manifest."""
    manifest = read_manifest(path)
    ids = {}
    for split in manifest.files:
        data = load_split(path, split, manifest=manifest, verify="sha256")
        check_split(
            split,
            data,
            Path(path) / manifest.files[split]["file"],
            manifest.label_kind,
            manifest.label_range,
            manifest.num_classes,
        )
        ids[split] = SplitData(ids=data.ids, labels=data.labels[:0], features={}, lengths={})
        del data  # one split's features in memory at a time
    check_splits(
        ids,
        Path(path) / MANIFEST,
        allow_duplicate_ids=bool(manifest.cleaning.get("allow_duplicate_ids")),
    )
    return manifest
