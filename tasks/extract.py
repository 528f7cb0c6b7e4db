"""The ``features`` flow's tasks: read the manifest, extract text / audio / visual, write the store.

Each extractor task handles the whole batch of one modality (a unit of retry); caching is per input
file inside the extractors (``feature_store.extract.cache``), so Prefect's own result caching is off
here (``NO_CACHE``) and results are not persisted -- the tasks return paths to cache entries, not
arrays. The extractors themselves (the plain functions) live in ``feature_store.extract``; the
alignment and the store writer here are plain functions with their task beside them.

``extract_features`` runs these tasks in order. It is the ``features`` flow's body
(``flows.features``) and runs inside any calling flow too (``tasks.prepare.extract_raw_manifest``:
``--data utterances.csv``), so extraction and training show as one flow run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from msaflow.atomic import atomic_target
from msaflow.feature_store.extract import DataError, Utterance, read_extraction_manifest
from msaflow.feature_store.extract.audio import AudioConfig, extract_audio_batch
from msaflow.feature_store.extract.audio import pool_to_words as pool_audio
from msaflow.feature_store.extract.cache import load_entry
from msaflow.feature_store.extract.text import TextConfig, extract_text_batch, get_encoder
from msaflow.feature_store.extract.visual import VisualConfig, extract_visual_batch
from msaflow.feature_store.extract.visual import pool_to_words as pool_visual
from msaflow.modalities import MODALITIES

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="read-extraction-manifest", **_TASK)
def read_manifest_task(
    manifest: str, label_range: tuple[float, float] | None = None
) -> tuple[list[Utterance], dict[str, bool], list[dict]]:
    return read_extraction_manifest(manifest, label_range)  # bad labels fail their row, not the run


@task(name="extract-text", **_TASK)
def extract_text_task(
    utts: list[Utterance], config: TextConfig, cache_dir: str | None, progress: bool
) -> dict[str, Any]:
    return extract_text_batch(
        utts, config, cache_dir=Path(cache_dir) if cache_dir else None, progress=progress
    )


@task(name="extract-audio", retries=1, retry_delay_seconds=1, **_TASK)
def extract_audio_task(
    utts: list[Utterance], config: AudioConfig, cache_dir: str | None, progress: bool
) -> dict[str, Any]:
    return extract_audio_batch(
        utts, config, cache_dir=Path(cache_dir) if cache_dir else None, progress=progress
    )


@task(name="extract-visual", retries=1, retry_delay_seconds=1, **_TASK)
def extract_visual_task(
    utts: list[Utterance], config: VisualConfig, cache_dir: str | None
) -> dict[str, Any]:
    return extract_visual_batch(utts, config, cache_dir=Path(cache_dir) if cache_dir else None)


def _pad(rows: list[np.ndarray], t: int, d: int) -> np.ndarray:
    out = np.zeros((len(rows), t, d), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : min(len(r), t)] = r[:t]
    return out


def align_utterances(
    utts: list[Utterance], present: dict[str, bool], results: dict[str, dict], max_words: int
) -> tuple[dict[str, dict[str, Any]], list[dict], dict[str, dict[str, int]]]:
    """Pool every modality to the utterance's words; returns per-split arrays, failures, mode
    counts."""
    failed = {f["id"] for r in results.values() for f in r["failures"]}
    mods = [m for m in MODALITIES if present[m]]
    per_split: dict[str, dict[str, list]] = {}
    modes: dict[str, dict[str, int]] = {"audio": {}, "vision": {}}
    for u in utts:
        if u.id in failed or any(u.id not in results[m]["entries"] for m in mods):
            continue
        n_words = len(u.word_list()) if present["text"] else 0
        feats: dict[str, np.ndarray] = {}
        duration = None
        if present["text"]:
            feats["text"] = load_entry(results["text"]["entries"][u.id])["words"]
        if present["audio"]:
            entry = load_entry(results["audio"]["entries"][u.id])
            duration = float(entry["duration"])
            feats["audio"], mode = pool_audio(
                entry["frames"], duration, timings=u.words, n_words=n_words, max_words=max_words
            )
            modes["audio"][mode] = modes["audio"].get(mode, 0) + 1
        if present["vision"]:
            entry = load_entry(results["vision"]["entries"][u.id])
            feats["vision"], _, mode = pool_visual(
                entry, timings=u.words, n_words=n_words, duration=duration, max_words=max_words
            )
            modes["vision"][mode] = modes["vision"].get(mode, 0) + 1
        length = min(max(len(v) for v in feats.values()), max_words)
        s = per_split.setdefault(
            u.split,
            {
                "ids": [],
                "labels": [],
                "texts": [],
                "video_ids": [],
                "clip_ids": [],
                "lengths": [],
                **{m: [] for m in mods},
            },
        )
        s["ids"].append(u.id)
        s["labels"].append(u.label)
        s["texts"].append(u.text or "")
        s["video_ids"].append(u.video_id or u.id)
        s["clip_ids"].append(u.clip_id or "")
        s["lengths"].append(length)
        for m in mods:
            s[m].append(feats[m])
    failures = [f for r in results.values() for f in r["failures"]]
    return per_split, failures, modes


def write_store(
    manifest: str,
    out: str,
    utts: list[Utterance],
    present: dict[str, bool],
    results: dict[str, dict],
    max_words: int,
    config: dict[str, Any],
    label_range: tuple[float, float],
    text_ids: bool,
    text_config: TextConfig,
    name: str | None,
    force: bool = False,
    data_kind: str = "sentiment",
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Align the extracted features to words and write the store (and the token-id sidecar).

    Returns the split sizes, the number written, every failure, the dims, the content hash and
    the sidecar's path. All utterances failing is a ``DataError``: an empty store is no result.
    """
    from msaflow.feature_store import SplitData, write_dataset

    per_split, failures, modes = align_utterances(utts, present, results, max_words)
    failures = list(config.get("manifest_failures", [])) + failures
    config = {k: v for k, v in config.items() if k != "manifest_failures"}
    n_ok = sum(len(s["ids"]) for s in per_split.values())
    if n_ok == 0:
        raise DataError(
            manifest,
            "utterances",
            f"at least one utterance that extracts cleanly; all {len(failures)} failed, e.g. "
            + "; ".join(f["error"] for f in failures[:3]),
        )
    dims = {
        "text": results.get("text", {}).get("dim"),
        "audio": len(results["audio"]["feature_names"]) if present["audio"] else None,
        "vision": len(results["vision"]["feature_names"]) if present["vision"] else None,
    }
    mods = [m for m in MODALITIES if present[m]]
    splits = {}
    for split, s in per_split.items():
        lengths = np.asarray(s["lengths"], dtype=np.int64)
        splits[split] = SplitData(
            ids=np.asarray(s["ids"], dtype=str),
            labels=np.asarray(s["labels"], dtype=np.float32),
            features={m: np.ascontiguousarray(_pad(s[m], max_words, dims[m])) for m in mods},
            lengths={m: lengths.copy() for m in mods},
            video_ids=np.asarray(s["video_ids"], dtype=str),
            clip_ids=np.asarray(s["clip_ids"], dtype=str),
            texts=np.asarray(s["texts"], dtype=str),
            # classification: the manifest's label is the class index (features text --task emotion)
            class_labels=np.asarray(s["labels"], dtype=np.int64) if class_names else None,
        )
    config = {
        **config,
        "alignment_modes": modes,
        "failures": failures,
        "dims": {m: dims[m] for m in mods},
    }
    source_sha = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    manifest_obj = write_dataset(
        out,
        splits,
        name=name or Path(out).name,
        source="extract",
        data_kind=data_kind,
        label_kind="classification" if class_names else "regression",
        label_range=tuple(label_range),
        source_sha256=source_sha,
        config=config,
        num_classes=len(class_names) if class_names else 1,
        class_names=class_names,
        force=force,
    )
    extra = None
    if text_ids and present["text"]:
        # The store schema holds float (N, T, d) modalities only; token ids go to a sidecar file.
        encoder = get_encoder(text_config)
        by_id = {u.id: u for u in utts}
        arrays = {}
        for split, s in per_split.items():
            arrays[f"{split}_ids"] = np.asarray(s["ids"], dtype=str)
            arrays[f"{split}_text_bert"] = encoder.token_ids(
                [by_id[i].word_list() for i in s["ids"]], max_words
            )
        extra = Path(str(Path(out).resolve()) + ".text_bert.npz")
        with atomic_target(extra) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {
        "splits": {k: len(v["ids"]) for k, v in per_split.items()},
        "written": n_ok,
        "failures": failures,
        "dims": {m: dims[m] for m in mods},
        "content_hash": getattr(manifest_obj, "content_hash", None),
        "text_ids_path": str(extra) if extra else None,
    }


write_store_task = task(name="write-feature-store", **_TASK)(write_store)


def extract_features(
    manifest: str,
    out: str,
    text_model: str | None = None,
    max_words: int = 50,
    text_ids: bool = False,
    f0: str = "pyin",
    visual_kind: str = "auto",
    batch_size: int = 64,
    label_range: tuple[float, float] = (-3.0, 3.0),
    name: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    force: bool = False,
    data_kind: str = "sentiment",
    class_names: list[str] | None = None,
    source_failures: list[dict] | None = None,
) -> dict[str, Any]:
    """Extract word-aligned features for every utterance in ``manifest`` and write a store at
    ``out``.

    Returns ``{"out", "splits", "written", "failures", "cache": {modality: {hits, misses}}, "dims",
    "seconds"}``. Failed utterances are left out and listed; if all fail, ``DataError``.
    ``class_names``: the manifest's labels are class indices (a classification store,
    ``data_kind``);
    ``source_failures``: rows a converter already left out (``features text``), listed with the
    rest.
    """
    t0 = time.perf_counter()
    utts, present, manifest_failures = read_manifest_task(manifest, tuple(label_range))
    text_cfg = TextConfig(model=text_model, max_words=max_words, batch_size=batch_size)
    audio_cfg = AudioConfig(f0=f0)
    visual_cfg = VisualConfig(kind=visual_kind)
    results: dict[str, dict] = {}
    if present["text"]:
        results["text"] = extract_text_task(utts, text_cfg, cache_dir, progress)
    if present["audio"]:
        results["audio"] = extract_audio_task(utts, audio_cfg, cache_dir, progress)
    if present["vision"]:
        results["vision"] = extract_visual_task(utts, visual_cfg, cache_dir)
    config = {
        "extractor": "msaflow.features",
        "manifest": str(Path(manifest).resolve()),
        "max_words": max_words,
        "manifest_failures": list(source_failures or []) + manifest_failures,
        "text": {
            "model": results["text"]["model"],
            "pooling": "mean of sub-tokens per word (word_ids)",
            "layer": "last",
        }
        if present["text"]
        else None,
        "audio": {
            "feature_names": results["audio"]["feature_names"],
            "config": results["audio"]["config"],
            "frame_rate_hz": 100,
        }
        if present["audio"]
        else None,
        # kind, profile, column choice, feature names, face rule (feature_store/extract/visual.py)
        "vision": results["vision"]["manifest_config"] if present["vision"] else None,
    }
    written = write_store_task(
        manifest,
        out,
        utts,
        present,
        results,
        max_words,
        config,
        label_range,
        text_ids,
        text_cfg,
        name,
        force,
        data_kind,
        class_names,
    )
    return {
        "out": str(Path(out).resolve()),
        **written,
        "cache": {m: r["cache"] for m, r in results.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
