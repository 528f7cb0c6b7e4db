"""Where a run's data comes from: ``--data`` checked, resolved to a store, and split into folds.

``check_data`` reads what ``--data`` names without writing anything, before a flow starts (the
CLI and the Python API call it through the flows' input checks). ``resolve_source`` turns it into a
``DataRef``, inside the flow: a simulation is synthesized, a pickle ingested, a store validated
(``prepare_data``), a raw-input manifest (``.csv``) extracted first (``extract_raw_manifest``).
``make_folds`` derives subject-disjoint fold stores from one store. Every store msaflow derives
lives under ``$MSAFLOW_HOME/stores`` and is keyed on its source, so each step is cached on content.

Each step is a plain function (tested without Prefect) with its ``@task`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from msaflow.atomic import atomic_write
from msaflow.errors import DataError
from msaflow.settings import msaflow_home
from msaflow.tasks.policy import retry_transient
from msaflow.tasks.progress import report as report_progress
from msaflow.tasks.refs import DataRef

DATA_HELP = (
    "a feature-store directory, an MMSA/MulT .pkl file, a raw-input manifest .csv, or sim-<profile>"
)


def store_dir(name: str) -> Path:
    """``$MSAFLOW_HOME/stores/<name>``: where msaflow writes the stores it derives."""
    return msaflow_home() / "stores" / name


# --------------------------------------------------------------------------------------------------
# Checks before a flow starts
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    """What ``--data`` names, parsed in one place for the check, the preparation and the routing.

    ``kind``: ``sim`` (``sim-<profile>``, or no ``--data``), ``store`` (a folder), ``raw`` (a
    raw-input manifest ``.csv``, ``features extract``'s format, extracted first), ``pickle`` (any
    other file: MMSA/MulT), or ``missing`` (nothing there).
    """

    kind: str
    given: str | None
    profile: str = ""
    path: Path | None = None


def parse_data(data: str | None, default_profile: str = "mosi") -> DataSource:
    if data is None or data.startswith("sim-"):
        return DataSource(
            "sim", data, profile=data.removeprefix("sim-") if data else default_profile
        )
    path = Path(data).expanduser()
    if path.is_dir():
        kind = "store"
    elif path.is_file():
        kind = "raw" if path.suffix.lower() == ".csv" else "pickle"
    else:
        kind = "missing"
    return DataSource(kind, data, path=path)


def check_raw_manifest(path: str | Path) -> None:
    """Manifest-wide errors, and a manifest with no usable row, before a flow starts.

    Rows with a bad label, split or a missing audio/visual file are only reported (the extractors
    skip them); a manifest where no row survives fails here with one line instead of after Prefect
    started.
    """
    from msaflow.feature_store.extract import read_extraction_manifest
    from msaflow.feature_store.extract.visual import VisualConfig, preflight_visual

    utts, present, failures = read_extraction_manifest(path)
    missing = {
        u.id: f for u in utts for f in (u.audio, u.visual) if f is not None and not f.is_file()
    }
    usable = [u for u in utts if u.id not in missing]
    if not usable:
        examples = [f["error"] for f in failures[:2]] + [
            f"utterance {i!r}: no file {f}" for i, f in list(missing.items())[:2]
        ]
        raise DataError(
            path,
            "rows",
            f"at least one usable utterance; all {len(utts) + len(failures)} rows "
            f"fail, e.g. {'; '.join(examples[:2])}",
        )
    if present["vision"]:
        preflight_visual(
            usable, VisualConfig("auto")
        )  # files whose column sets differ: one line naming two


def check_data(data: str | None, scale: float = 1.0, data_format: str = "mmsa") -> None:
    """What ``prepare_data`` will read, checked before a flow starts: the sim profile and scale, a
    store's manifest, a pickle's format, a raw manifest's rows. (The full check of a store's files
    runs in the task.)"""
    from msaflow.feature_store import read_manifest
    from msaflow.feature_store.ingest import FORMATS
    from msaflow.feature_store.sim import SIM_PROFILES

    source = parse_data(data)
    if source.kind == "sim":
        if source.profile not in SIM_PROFILES:
            raise DataError(
                data, "--data", f"sim-<profile> with a profile among {sorted(SIM_PROFILES)}"
            )
        if not 0 < scale <= 1:
            raise DataError(data or "sim-mosi", "--scale", f"a fraction in (0, 1], got {scale:g}")
    elif source.kind == "store":
        read_manifest(source.path)
    elif source.kind == "raw":
        check_raw_manifest(source.path)
    elif source.kind == "pickle":
        if data_format not in FORMATS:
            raise DataError(
                source.path, "--format", f"one of {', '.join(FORMATS)}, got {data_format!r}"
            )
    else:
        raise DataError(source.path, "--data", DATA_HELP)


# --------------------------------------------------------------------------------------------------
# A store, a pickle or a simulation
# --------------------------------------------------------------------------------------------------
def prepare_store(
    data: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    profile: str = "mosi",
    seed: int = 0,
) -> DataRef:
    """Synthesize (default), validate an existing store, or ingest a pickle; all cached on
    content."""
    from msaflow.feature_store import ingest, synthesize, validate_dataset

    source = parse_data(data, default_profile=profile)
    if source.kind == "sim":
        suffix = "" if scale == 1.0 else f"-x{scale:g}"
        path = store_dir(f"sim-{source.profile}{suffix}")
        manifest = synthesize(source.profile, path, seed=seed, scale=scale)
    elif source.kind == "store":
        path = source.path
        manifest = validate_dataset(path)
    elif source.kind in ("pickle", "raw"):  # a .csv given here is read as the --format says
        src = source.path
        digest = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
        path = store_dir(f"{src.stem}-{digest}")
        manifest = ingest(data_format, src, path)
    else:
        raise DataError(source.path, "--data", DATA_HELP)
    return DataRef.from_manifest(str(path), manifest)


prepare_data = task(name="prepare-data", retries=1, retry_condition_fn=retry_transient)(
    prepare_store
)


# --------------------------------------------------------------------------------------------------
# ``--data utterances.csv``: extraction inside the calling flow (pipeline, tune, reproduce)
# --------------------------------------------------------------------------------------------------
EXTRACT_SOURCES = ("feature_store/extract", "tasks/extract.py", "flows/features.py")
EXTRACT_OPTIONS: dict[str, Any] = {
    "max_words": 50,
    "f0": "pyin",
    "visual_kind": "auto",
    "label_range": [-3.0, 3.0],
    "text_model": None,
}


def raw_store_dir(manifest: str | Path) -> Path:
    """``$MSAFLOW_HOME/stores/<stem>-<hash of the manifest's path>``, as for an ingested pickle."""
    src = Path(manifest).expanduser()
    return store_dir(f"{src.stem}-{hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]}")


def _stamp_path(store: Path) -> Path:
    return store.with_name(store.name + ".inputs.json")  # beside the store, like its .text_bert.npz


@cache
def _extractor_version() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in EXTRACT_SOURCES:
        for path in sorted((root / rel).rglob("*.py")) if (root / rel).is_dir() else [root / rel]:
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def hash_raw_inputs(manifest: str, options: dict[str, Any]) -> str:
    """One hash of everything extraction reads: the manifest, every file it names (bytes), the
    extraction options and the extractors' code. Equal hash: the store written last time is
    current."""
    from msaflow.feature_store.extract import read_extraction_manifest
    from msaflow.feature_store.schema import file_sha256

    h = hashlib.sha256(Path(manifest).read_bytes())
    h.update(
        json.dumps({"options": options, "code": _extractor_version()}, sort_keys=True).encode()
    )
    utts, _, _ = read_extraction_manifest(manifest)
    for u in utts:  # words/timings are part of the utterance; timings files are read into them
        h.update(json.dumps([u.id, u.words], default=str).encode())
        for f in (u.audio, u.visual):
            h.update(
                b"-" if f is None else (file_sha256(f).encode() if f.is_file() else b"missing")
            )
    return h.hexdigest()


raw_inputs_task = task(name="hash-raw-inputs", cache_policy=NO_CACHE, persist_result=False)(
    hash_raw_inputs
)


def store_is_current(store: Path, inputs: str) -> bool:
    """The store was written from inputs that hash to ``inputs`` and is unchanged since."""
    from msaflow.feature_store import read_manifest

    try:
        stamp = json.loads(_stamp_path(store).read_text())
        return stamp.get("inputs") == inputs and read_manifest(store).content_hash == stamp.get(
            "content_hash"
        )
    except (OSError, ValueError, DataError):
        return False


def extract_raw_manifest(manifest: str, progress: bool = True) -> dict[str, Any]:
    """Extract ``manifest`` into its store, as tasks of the calling flow run; skipped when current.

    Runs the ``features`` flow's body (``tasks.extract.extract_features``), not the flow: its tasks
    (read manifest, extract text/audio/visual, write store) then run inside the caller's flow run,
    so the whole extract -> train -> evaluate chain is one flow run in the Prefect UI. Per-file
    caches (``feature_store.extract.cache``) make a partial re-extraction cheap; an unchanged input
    hash (``raw_inputs_task``) skips extraction altogether. Returns a summary for the parent run.
    """
    from msaflow.tasks.extract import extract_features

    src = Path(manifest).expanduser().resolve()
    store = raw_store_dir(src)
    options = dict(EXTRACT_OPTIONS)
    inputs = raw_inputs_task(str(src), options)
    if store_is_current(store, inputs):
        return {"manifest": str(src), "store": str(store), "skipped": True}
    result = extract_features(
        manifest=str(src),
        out=str(store),
        name=src.stem,
        progress=progress,
        text_model=options["text_model"],
        max_words=options["max_words"],
        f0=options["f0"],
        visual_kind=options["visual_kind"],
        label_range=tuple(options["label_range"]),
    )
    stamp = _stamp_path(store)
    stamp_body = {"inputs": inputs, "content_hash": result["content_hash"], "manifest": str(src)}
    atomic_write(stamp, json.dumps(stamp_body))
    for f in result["failures"]:  # reported and skipped, as by ``features extract``
        report_progress(
            f"[extract] skipped {f['id']} ({f['stage']}): {f['error']}", logging.WARNING
        )
    return {
        "manifest": str(src),
        "store": str(store),
        "skipped": False,
        "written": result["written"],
        "failures": len(result["failures"]),
        "cache": result["cache"],
        "seconds": result["seconds"],
    }


def resolve_source(
    data: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    *,
    as_tasks: bool = True,
) -> DataRef:
    """The one way from ``--data`` to a ``DataRef``, for every flow and the Python API.

    A raw manifest (``.csv``) is extracted first (``extract_raw_manifest``) and its store prepared;
    everything else goes to ``prepare_data`` directly. Called inside a flow, the steps are its task
    runs. ``as_tasks=False`` runs a store's, a pickle's or a simulation's preparation as the plain
    function (no Prefect run: ``msaflow.load_dataset`` reading a local store); a raw manifest's
    extraction and preparation run as tasks either way.
    """
    if parse_data(data).kind != "raw":
        prepare = prepare_data if as_tasks else prepare_store
        return prepare(data, scale=scale, data_format=data_format)
    extraction = extract_raw_manifest(data)
    return prepare_data(extraction["store"]).with_extraction(extraction)


# --------------------------------------------------------------------------------------------------
# k-fold cross-validation stores
# --------------------------------------------------------------------------------------------------
def write_folds(data_ref: DataRef, k: int, seed: int = 0) -> list[DataRef]:
    """k subject-disjoint train/valid/test stores from one store (5-fold CV on CMDC).

    All splits are pooled, then ``tasks.folds.fold_splits`` deals whole subjects into folds
    (balanced by PHQ-9 > 9 for depression) and carves each fold's validation set from its training
    subjects. Each fold is written as its own store (cached: rewritten only when the source
    changes).
    """
    from dataclasses import replace

    import numpy as np

    from msaflow.feature_store import SplitData, load_dataset, read_manifest, write_dataset
    from msaflow.tasks.folds import fold_splits

    manifest, splits = load_dataset(data_ref.path)
    parts = list(splits.values())
    if any(p.subjects is None for p in parts):
        raise DataError(
            data_ref.path, "subject", "a subject column for subject-wise folds (--folds)"
        )
    pooled = SplitData(
        ids=np.concatenate([p.ids for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        features={m: np.concatenate([p.features[m] for p in parts]) for m in parts[0].features},
        lengths={m: np.concatenate([p.lengths[m] for p in parts]) for m in parts[0].lengths},
        class_labels=None
        if parts[0].class_labels is None
        else np.concatenate([p.class_labels for p in parts]),
        video_ids=np.concatenate([p.video_ids for p in parts]),
        clip_ids=np.concatenate([p.clip_ids for p in parts]),
        subjects=np.concatenate([p.subjects for p in parts]),
    )
    labels = pooled.labels if manifest.data_kind == "depression" else None
    refs = []
    for i, fold in enumerate(fold_splits(pooled.subjects, labels, k=k, seed=seed), start=1):
        path = store_dir(f"{manifest.name}-{manifest.content_hash[:8]}-fold{i}of{k}-s{seed}")
        config = {"folds_of": manifest.content_hash, "k": k, "fold": i, "seed": seed}
        try:
            fold_manifest = read_manifest(path)
            if fold_manifest.config != config:
                raise DataError(path, "config", "the same fold definition")
        except DataError:
            fold_manifest = write_dataset(
                path,
                {name: pooled.take(fold[name]) for name in ("train", "valid", "test")},
                name=f"{manifest.name}-fold{i}",
                source=manifest.source,
                data_kind=manifest.data_kind,
                label_kind=manifest.label_kind,
                label_range=tuple(manifest.label_range),
                source_sha256=manifest.content_hash,
                config=config,
                num_classes=manifest.num_classes,
                class_names=manifest.class_names,
            )
        refs.append(
            replace(
                data_ref,
                path=str(path),
                name=fold_manifest.name,
                fold=i,
                manifest_hash=fold_manifest.content_hash,
            )
        )
    return refs


make_folds = task(name="make-folds", retries=1, retry_condition_fn=retry_transient)(write_folds)
