"""Ingest the two pickle formats real MSA features come in: MMSA processed and MulT-style.

Rules:
- Unpickling never runs code: a restricted unpickler admits numpy arrays/scalars/dtypes and plain
  containers and numbers only, and refuses anything else naming the class.
- Non-finite feature values (real MOSEI COVAREP has -inf and NaN) are counted per split and
  modality and replaced according to ``nonfinite`` (``zero``, the field's practice, or ``error``).
  The counts go in the manifest's ``cleaning``.
- Lengths: unaligned MMSA files carry ``audio_lengths``/``vision_lengths`` and frames past a length
  are not always zero, so lengths are taken from those fields, never from zero-detection, and the
  frames past them are zeroed (counted). Aligned files have no lengths: the text length comes from
  ``text_bert``'s attention mask when present (all modalities share it), else the full T.
- Re-ingesting an unchanged source with the same config is a no-op.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.schema import (
    MODALITIES,
    DataError,
    Manifest,
    SplitData,
    check_split,
    file_sha256,
    read_manifest,
    write_dataset,
)

FORMATS = ("mmsa", "mult")
NONFINITE_POLICIES = ("zero", "error")

_SAFE_GLOBALS = {
    ("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                              "int", "float", "complex", "bool", "slice", "object")
} | {
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (module == "numpy" and name.startswith("dtypes")):
            return super().find_class(module, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(module, name)
        raise DataError(self._path, "pickle",
                        f"only numpy arrays, numbers, strings and containers; refused class {module}.{name}")


def safe_load_pickle(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(io.BufferedReader(fh, 1 << 20), path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError, ImportError, MemoryError) as exc:
        raise DataError(path, "pickle", f"a complete, uncorrupted pickle ({type(exc).__name__}: {exc})") from None


def _array(path: Path, obj: Any, field: str, rank: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(obj)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is a data error
        raise DataError(path, field, f"an array ({exc})") from None
    if rank is not None and arr.ndim != rank:
        raise DataError(path, field, f"a rank-{rank} array, got shape {arr.shape}")
    return arr


def _clean(path: Path, split: str, m: str, x: np.ndarray, policy: str, counts: dict) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)  # float64 sources halve here
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    counts.setdefault("nonfinite", {}).setdefault(split, {})[m] = n_bad
    if n_bad:
        if policy == "error":
            raise DataError(path, f"{split}.{m}", f"finite features; found {n_bad} NaN/inf (use nonfinite=zero)")
        x = np.where(bad, np.float32(0), x)
    return x


def _split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.asarray(ids)
    if ids.ndim == 2:  # MulT: rows like [video, clip start, clip end] or [video, clip]
        video = ids[:, 0].astype(str)
        clip = ids[:, 1].astype(str) if ids.shape[1] > 1 else np.arange(len(ids)).astype(str)
        return np.array([f"{v}$_${c}" for v, c in zip(video, clip, strict=True)]), video, clip
    full = ids.astype(str)
    parts = [s.rsplit("$_$", 1) if "$_$" in s else s.rsplit("_", 1) for s in full]
    video = np.array([p[0] for p in parts])
    clip = np.array([p[1] if len(p) > 1 else "" for p in parts])
    return full, video, clip


def _mmsa_split(path: Path, name: str, d: dict, policy: str, counts: dict) -> SplitData:
    if not isinstance(d, dict):
        raise DataError(path, name, f"a dict of arrays, got {type(d).__name__}")
    for key in ("text", "audio", "vision", "regression_labels", "id"):
        if key not in d:
            raise DataError(path, f"{name}.{key}", "an MMSA split field (text, audio, vision, regression_labels, id)")
    feats = {m: _clean(path, name, m, _array(path, d[m], f"{name}.{m}", 3), policy, counts) for m in MODALITIES}
    n = len(feats["text"])
    for m, x in feats.items():
        if len(x) != n:
            raise DataError(path, f"{name}.{m}", f"N={n} rows like text, got {len(x)}")
    labels = _array(path, d["regression_labels"], f"{name}.regression_labels").reshape(-1).astype(np.float32)
    if len(labels) != n:
        raise DataError(path, f"{name}.regression_labels", f"N={n} labels, got {len(labels)}")
    t_text = feats["text"].shape[1]
    if "text_bert" in d:
        tb = _array(path, d["text_bert"], f"{name}.text_bert", 3)
        text_len = tb[:, 1, :].sum(1).astype(np.int64)  # attention mask
    else:
        text_len = np.full(n, t_text, np.int64)
    lengths = {"text": np.minimum(text_len, t_text)}
    zeroed = 0
    for m in ("audio", "vision"):
        key = f"{m}_lengths"
        t_m = feats[m].shape[1]
        if key in d:
            ln = _array(path, d[key], f"{name}.{key}").reshape(-1).astype(np.int64)
            if len(ln) != n or ln.min() < 0:
                raise DataError(path, f"{name}.{key}", f"N={n} non-negative lengths")
            ln = np.minimum(ln, t_m)
            past = np.arange(t_m)[None, :] >= ln[:, None]
            zeroed += int((feats[m][past] != 0).any(-1).sum())
            feats[m][past] = 0.0
        else:  # aligned: every modality shares the text's word positions
            ln = lengths["text"].copy() if t_m == t_text else np.full(n, t_m, np.int64)
        lengths[m] = ln
    counts.setdefault("frames_zeroed_past_length", {})[name] = zeroed
    full, video, clip = _split_ids(d["id"])
    texts = np.asarray(d["raw_text"]).astype(str) if "raw_text" in d else None
    return SplitData(ids=full, labels=labels, features=feats, lengths=lengths, video_ids=video,
                     clip_ids=clip, texts=texts)


def _mult_split(path: Path, name: str, d: dict, policy: str, counts: dict) -> SplitData:
    if not isinstance(d, dict):
        raise DataError(path, name, f"a dict of arrays, got {type(d).__name__}")
    for key in ("text", "audio", "vision", "labels"):
        if key not in d:
            raise DataError(path, f"{name}.{key}", "a MulT split field (text, audio, vision, labels, id)")
    feats = {m: _clean(path, name, m, _array(path, d[m], f"{name}.{m}", 3), policy, counts) for m in MODALITIES}
    n = len(feats["text"])
    for m, x in feats.items():
        if len(x) != n:
            raise DataError(path, f"{name}.{m}", f"N={n} rows like text, got {len(x)}")
    labels = _array(path, d["labels"], f"{name}.labels")
    if labels.size != n:
        raise DataError(path, f"{name}.labels", f"one sentiment score per row, shape (N, 1, 1); got {labels.shape}")
    ids = d.get("id", np.array([f"{name}{i}" for i in range(n)]))
    full, video, clip = _split_ids(ids)
    if len(full) != n:
        raise DataError(path, f"{name}.id", f"N={n} ids, got {len(full)}")
    return SplitData(ids=full, labels=labels.reshape(-1).astype(np.float32), features=feats,
                     lengths={m: np.full(n, feats[m].shape[1], np.int64) for m in MODALITIES},
                     video_ids=video, clip_ids=clip)


def ingest(fmt: str, path: str | Path, out_dir: str | Path, nonfinite: str = "zero",
           label_range: tuple[float, float] = (-3.0, 3.0), name: str | None = None) -> Manifest:
    """Ingest an MMSA or MulT pickle into a store at ``out_dir`` (a no-op when unchanged)."""
    src, out = Path(path), Path(out_dir)
    if fmt not in FORMATS:
        raise DataError(src, "format", f"one of {FORMATS}, got {fmt!r}")
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(src, "nonfinite", f"one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    if not src.is_file():
        raise DataError(src, "path", "an existing pickle file")
    sha = file_sha256(src)
    config = {"ingest": fmt, "version": 1, "nonfinite": nonfinite, "label_range": list(label_range)}
    if (out / "manifest.json").is_file():
        try:
            existing = read_manifest(out)
            if existing.source_sha256 == sha and existing.config == config:
                return existing
        except DataError:
            pass
    data = safe_load_pickle(src)
    if not isinstance(data, dict):
        raise DataError(src, "top level", f"a dict with train/valid/test, got {type(data).__name__}")
    keys = {"valid": ("valid", "dev", "val")}
    splits_raw = {}
    for split in ("train", "valid", "test"):
        found = next((k for k in keys.get(split, (split,)) if k in data), None)
        if found is None:
            raise DataError(src, split, f"a {split!r} split (top-level keys {sorted(map(str, data))})")
        splits_raw[split] = data[found]
    counts: dict[str, Any] = {}
    reader = _mmsa_split if fmt == "mmsa" else _mult_split
    splits = {s: reader(src, s, d, nonfinite, counts) for s, d in splits_raw.items()}
    shapes = {m: {s.features[m].shape[1:] for s in splits.values()} for m in MODALITIES}
    for m, sh in shapes.items():
        if len(sh) != 1:
            raise DataError(src, m, f"one (T, d) shape across splits, got {sorted(sh)}")
    for split, d in splits.items():  # errors name the source file, not the store
        check_split(split, d, src, "regression", label_range, 1)
    counts["nonfinite_policy"] = nonfinite
    return write_dataset(
        out, splits, name=name or src.stem, source=f"{fmt}:{src.name}", task="sentiment",
        label_kind="regression", label_range=label_range, source_sha256=sha, config=config, cleaning=counts,
    )

