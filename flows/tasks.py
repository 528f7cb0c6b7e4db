"""Prefect tasks: each one a unit of retry and caching (prepare data, train, evaluate, summarise).

Caching is keyed on content: the dataset manifest hash, the fully resolved config, the code version
and the tracking target. Re-running an unchanged pipeline therefore skips finished training and
evaluation (their results persist under ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.errors import quiet_user_errors
from models.spec import Cell  # a table's column; defined with the tables
from msaflow.atomic import atomic_write
from msaflow.settings import msaflow_home
from tasks import tracking as tr
from tasks.config import ConfigError, RunConfig

SOURCE_PACKAGES = ("models", "tasks", "feature_store")
quiet_user_errors()  # every flow imports this module: user errors stay one line (flows/errors.py)


@cache
def code_version() -> str:
    """Hash of the library sources that determine a result (not of flows or the CLI)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def is_transient(exc: BaseException) -> bool:
    """Retry only what may pass on its own: I/O hiccups, lost connections, CUDA out-of-memory."""
    from feature_store import DataError

    if isinstance(
        exc,
        DataError | ConfigError | FloatingPointError | FileNotFoundError | ValueError | KeyError,
    ):
        return False
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "connection" in text or "temporarily unavailable" in text


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001
        return is_transient(exc)
    return False


def run_key(cfg: RunConfig, data_ref: dict[str, Any], tracking: dict[str, str]) -> str:
    blob = "|".join(
        [
            data_ref["manifest_hash"],
            cfg.fingerprint(),
            code_version(),
            tracking["uri"],
            tracking["experiment_id"],
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _train_cache_key(context, parameters: dict[str, Any]) -> str:
    return (
        "train-"
        + run_key(parameters["cfg"], parameters["data_ref"], parameters["tracking"])
        + "-"
        + parameters["cell"]
    )


def _eval_cache_key(context, parameters: dict[str, Any]) -> str:
    return (
        "evaluate-"
        + run_key(parameters["cfg"], parameters["data_ref"], parameters["tracking"])
        + "-"
        + parameters["cell"]
    )


def _store_dir(name: str) -> Path:
    return msaflow_home() / "stores" / name


DATA_HELP = (
    "a feature-store directory, an MMSA/MulT .pkl file, a raw-input manifest .csv, or sim-<profile>"
)


def is_raw_manifest(data: str | None) -> bool:
    """``--data utterances.csv``: a raw-input manifest (``features extract``'s format) to extract
    first."""
    return data is not None and Path(data).suffix.lower() == ".csv"


def check_raw_manifest(path: str | Path) -> None:
    """Manifest-wide errors, and a manifest with no usable row, before a flow starts.

    Rows with a bad label, split or a missing audio/visual file are only reported (the extractors
    skip them); a manifest where no row survives fails here with one line instead of after Prefect
    started.
    """
    from feature_store import DataError
    from feature_store.extract import read_extraction_manifest
    from feature_store.extract.visual import VisualConfig, preflight_visual

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
    from feature_store import DataError, read_manifest
    from feature_store.ingest import FORMATS
    from feature_store.sim import SIM_PROFILES

    if data is None or data.startswith("sim-"):
        profile = data.removeprefix("sim-") if data else "mosi"
        if profile not in SIM_PROFILES:
            raise DataError(
                data, "--data", f"sim-<profile> with a profile among {sorted(SIM_PROFILES)}"
            )
        if not 0 < scale <= 1:
            raise DataError(data or "sim-mosi", "--scale", f"a fraction in (0, 1], got {scale:g}")
        return
    src = Path(data).expanduser()
    if src.is_dir():
        read_manifest(src)
    elif src.is_file() and is_raw_manifest(data):
        check_raw_manifest(src)
    elif src.is_file():
        if data_format not in FORMATS:
            raise DataError(src, "--format", f"one of {', '.join(FORMATS)}, got {data_format!r}")
    else:
        raise DataError(src, "--data", DATA_HELP)


@task(name="prepare-data", retries=1, retry_condition_fn=_retry_transient)
def prepare_data(
    data: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    profile: str = "mosi",
    seed: int = 0,
) -> dict[str, Any]:
    """Synthesize (default), validate an existing store, or ingest a pickle; all cached on
    content."""
    from feature_store import DataError, ingest, synthesize, validate_dataset

    if data is None or data.startswith("sim-"):
        profile = data.removeprefix("sim-") if data else profile
        suffix = "" if scale == 1.0 else f"-x{scale:g}"
        path = _store_dir(f"sim-{profile}{suffix}")
        manifest = synthesize(profile, path, seed=seed, scale=scale)
    else:
        src = Path(data).expanduser()
        if src.is_dir():
            path = src
            manifest = validate_dataset(src)
        elif src.is_file():
            digest = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
            path = _store_dir(f"{src.stem}-{digest}")
            manifest = ingest(data_format, src, path)
        else:
            raise DataError(src, "--data", DATA_HELP)
    return {
        "path": str(path),
        "name": manifest.name,
        "task": manifest.task,
        "manifest_hash": manifest.content_hash,
        "input_spec": manifest.input_spec(),
        "class_names": manifest.class_names,
        "source": manifest.source,
        "oracle": manifest.oracle,
    }


# --------------------------------------------------------------------------------------------------
# ``--data utterances.csv``: extraction inside the calling flow (pipeline, tune, reproduce)
# --------------------------------------------------------------------------------------------------
EXTRACT_SOURCES = ("feature_store/extract", "flows/features.py")


def raw_store_dir(manifest: str | Path) -> Path:
    """``$MSAFLOW_HOME/stores/<stem>-<hash of the manifest's path>``, as for an ingested pickle."""
    src = Path(manifest).expanduser()
    return _store_dir(f"{src.stem}-{hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]}")


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


@task(name="hash-raw-inputs", cache_policy=NO_CACHE, persist_result=False)
def raw_inputs_task(manifest: str, options: dict[str, Any]) -> str:
    """One hash of everything extraction reads: the manifest, every file it names (bytes), the
    extraction options and the extractors' code. Equal hash: the store written last time is
    current."""
    from feature_store.extract import read_extraction_manifest
    from feature_store.schema import file_sha256

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


def _store_is_current(store: Path, inputs: str) -> bool:
    from feature_store import DataError, read_manifest

    try:
        stamp = json.loads(_stamp_path(store).read_text())
        return stamp.get("inputs") == inputs and read_manifest(store).content_hash == stamp.get(
            "content_hash"
        )
    except (OSError, ValueError, DataError):
        return False


def extract_raw_manifest(manifest: str, progress: bool = True) -> dict[str, Any]:
    """Extract ``manifest`` into its store, as tasks of the calling flow run; skipped when current.

    Calls the ``features`` flow's body (``features.fn``), not the flow: its tasks (read manifest,
    extract text/audio/visual, write store) then run inside the caller's flow run, so the whole
    extract -> train -> evaluate chain is one flow run in the Prefect UI. Per-file caches
    (``feature_store.extract.cache``) make a partial re-extraction cheap; an unchanged input hash
    (``raw_inputs_task``) skips extraction altogether. Returns a summary for the parent run.
    """
    from flows.features import features

    src = Path(manifest).expanduser().resolve()
    store = raw_store_dir(src)
    options = {
        "max_words": 50,
        "f0": "pyin",
        "visual_kind": "auto",
        "label_range": [-3.0, 3.0],
        "text_model": None,
    }
    inputs = raw_inputs_task(str(src), options)
    if _store_is_current(store, inputs):
        return {"manifest": str(src), "store": str(store), "skipped": True}
    result = features.fn(
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
        print(
            f"[extract] skipped {f['id']} ({f['stage']}): {f['error']}", file=sys.stderr, flush=True
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


def resolve_data(
    data: str | None = None, scale: float = 1.0, data_format: str = "mmsa"
) -> dict[str, Any]:
    """Every flow's data source, called inside the flow: a raw manifest (``.csv``) is extracted
    first (``extract_raw_manifest``), everything else goes to ``prepare_data`` directly."""
    if not is_raw_manifest(data):
        return prepare_data(data, scale=scale, data_format=data_format)
    extraction = extract_raw_manifest(data)
    return {**prepare_data(extraction["store"]), "extraction": extraction}


@task(name="make-folds", retries=1, retry_condition_fn=_retry_transient)
def make_folds(data_ref: dict[str, Any], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """k subject-disjoint train/valid/test stores from one store (5-fold CV on CMDC).

    All splits are pooled, then ``tasks.folds.fold_splits`` deals whole subjects into folds
    (balanced by PHQ-9 > 9 for depression) and carves each fold's validation set from its training
    subjects. Each fold is written as its own store (cached: rewritten only when the source
    changes).
    """
    import numpy as np

    from feature_store import DataError, SplitData, load_dataset, read_manifest, write_dataset
    from tasks.folds import fold_splits

    manifest, splits = load_dataset(data_ref["path"])
    parts = list(splits.values())
    if any(p.subjects is None for p in parts):
        raise DataError(
            data_ref["path"], "subject", "a subject column for subject-wise folds (--folds)"
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
    labels = pooled.labels if manifest.task == "depression" else None
    refs = []
    for i, fold in enumerate(fold_splits(pooled.subjects, labels, k=k, seed=seed), start=1):
        path = _store_dir(f"{manifest.name}-{manifest.content_hash[:8]}-fold{i}of{k}-s{seed}")
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
                task=manifest.task,
                label_kind=manifest.label_kind,
                label_range=tuple(manifest.label_range),
                source_sha256=manifest.content_hash,
                config=config,
                num_classes=manifest.num_classes,
                class_names=manifest.class_names,
            )
        refs.append(
            {
                **data_ref,
                "path": str(path),
                "name": fold_manifest.name,
                "fold": i,
                "manifest_hash": fold_manifest.content_hash,
            }
        )
    return refs


def open_parent_run(
    tracking: dict[str, str],
    data_ref: dict[str, Any],
    model: str,
    cells: list[Cell],
    seeds: list[int],
    preset: str,
    kind: str,
) -> str:
    tags = {
        "msaflow.kind": kind,
        "model": model,
        "dataset": data_ref["name"],
        "preset": preset,
        "msaflow.dataset_source": data_ref["source"],
    }
    if data_ref.get("oracle"):  # a simulation's best achievable figures, for the report
        tags["msaflow.oracle"] = json.dumps(data_ref["oracle"], sort_keys=True)
    if (ex := data_ref.get("extraction")) is not None:  # --data utterances.csv: what extraction did
        tags["msaflow.raw_manifest"] = ex["manifest"]
        tags["msaflow.extraction"] = (
            "skipped (inputs unchanged)"
            if ex["skipped"]
            else (
                f"extracted {ex['written']} utterances, {ex['failures']} skipped; "
                + ", ".join(
                    f"{m}: {c['misses']} computed / {c['hits']} cached"
                    for m, c in ex["cache"].items()
                )
            )
        )
    run_id = tr.start_run(
        tracking["uri"], tracking["experiment_id"], f"{kind}/{model}/{data_ref['name']}", tags=tags
    )
    tr.log_params(
        tracking["uri"],
        run_id,
        {
            "model": model,
            "preset": preset,
            "dataset": data_ref["name"],
            "dataset.path": data_ref["path"],
            "dataset.manifest_hash": data_ref["manifest_hash"],
            "cells": ",".join(c.name for c in cells),
            "seeds": ",".join(map(str, seeds)),
        },
    )
    return run_id


def _progress(run_name: str, epochs: int):
    def report(epoch: int, record: dict[str, float]) -> None:
        shown = {
            k: record[k]
            for k in ("train/loss/total", "valid/mae", "valid/acc7", "valid/acc")
            if k in record
        }
        text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
        print(f"[{run_name}] epoch {epoch + 1}/{epochs} {text}", file=sys.stderr, flush=True)

    return report


@task(
    name="train",
    tags=["gpu"],
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_transient,
    cache_key_fn=_train_cache_key,
    persist_result=True,
)
def train_task(
    cfg: RunConfig,
    cell: str,
    data_ref: dict[str, Any],
    tracking: dict[str, str],
    parent_run_id: str,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train one (model, cell, seed) into its own MLflow child run; resumes from its checkpoint.

    ``fresh`` (``--force``, or the cached run was deleted) first removes this key's checkpoints, so
    the run trains from scratch instead of resuming a finished checkpoint.
    """
    from feature_store import load_dataset, read_manifest
    from models import get_spec
    from tasks.plots import learning_curves, run_trace_figures
    from tasks.train import clear_checkpoints, train_model

    uri = tracking["uri"]
    key = run_key(cfg, data_ref, tracking)
    run_name = cfg.run_name_for(cell)
    run_id = tr.find_child_run(uri, tracking["experiment_id"], parent_run_id, key)
    if run_id is None:
        run_id = tr.start_run(
            uri,
            tracking["experiment_id"],
            run_name,
            parent_run_id=parent_run_id,
            tags={
                "msaflow.key": key,
                "msaflow.kind": "train",
                "model": cfg.model,
                "variant": cfg.variant,
                "cell": cell,
                "seed": str(cfg.train.seed),
                "dataset": data_ref["name"],
                "preset": cfg.preset,
            },
        )
    else:
        tr.client(uri).update_run(run_id, status="RUNNING")
    tr.supersede_stale_runs(uri, tracking["experiment_id"], key, run_id)
    ckpt = msaflow_home() / "checkpoints" / key
    if fresh:
        clear_checkpoints(ckpt)  # last.pt / best.pt only: a user's file in that folder survives
    try:
        tr.log_config(uri, run_id, cfg)
        tr.log_dataset_input(uri, run_id, read_manifest(data_ref["path"]), data_ref["path"])
        _, splits = load_dataset(data_ref["path"], splits=("train", "valid"), shared=True)
        result = train_model(
            cfg,
            splits,
            task=data_ref["task"],
            class_names=data_ref["class_names"],
            checkpoint_dir=ckpt,
            callbacks=[_progress(run_name, cfg.train.epochs)],
            evaluate_test=False,
        )
        tr.log_rows(uri, run_id, result.history, "epoch")
        tr.log_rows(uri, run_id, result.step_traces, "step", skip=("epoch",))
        tr.log_rows(uri, run_id, result.epoch_traces, "epoch")
        tr.log_metrics(
            uri, run_id, {"best_epoch": result.best_epoch, "time/train_s": result.seconds}
        )
        if (
            result.standardization is not None
        ):  # the train-split statistics the model's inputs went through
            tr.client(uri).log_dict(run_id, result.standardization, "data/standardization.json")
        if result.resumed_from_epoch is not None:  # 0-based epoch the checkpoint resumed at
            tr.set_tags(uri, run_id, {"msaflow.resumed_from_epoch": result.resumed_from_epoch})
        tr.log_figures(
            uri,
            run_id,
            {
                "plots/learning_curves.png": learning_curves(result.history),
                **run_trace_figures(
                    result.step_traces, result.epoch_traces, get_spec(cfg.model).traces
                ),
            },
        )
    except BaseException as exc:
        tr.fail_run(uri, run_id, exc)
        raise
    return {
        "run_id": run_id,
        "run_name": run_name,
        "checkpoint_dir": str(ckpt),
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "train_seconds": result.seconds,
    }


@task(
    name="evaluate",
    retries=1,
    retry_condition_fn=_retry_transient,
    cache_key_fn=_eval_cache_key,
    persist_result=True,
)
def evaluate_task(
    trained: dict[str, Any],
    cfg: RunConfig,
    cell: str,
    data_ref: dict[str, Any],
    tracking: dict[str, str],
) -> dict[str, Any]:
    """Evaluate the best epoch on test, log test metrics and the model, and close the run."""
    from tasks.data import load_standardized, split_to_tensors
    from tasks.train import evaluate, load_best_model

    uri, run_id = tracking["uri"], trained["run_id"]
    try:
        # test goes through the same train-fit standardisation as in training (so does the logged
        # model's input)
        test = split_to_tensors(
            load_standardized(data_ref["path"], ["test"], cfg.train.standardize)[0]["test"]
        )
        model = load_best_model(trained["checkpoint_dir"], cfg)
        # the engine's own evaluation (fp32), as used for validation during training
        metrics, _, _ = evaluate(
            model,
            test,
            split="test",
            task=data_ref["task"],
            class_names=data_ref["class_names"],
            kind=cfg.model_cfg.task,
            batch_size=cfg.train.eval_batch_size,
            device=next(model.parameters()).device,
        )
        tr.log_metrics(uri, run_id, metrics)
        tr.log_model(uri, run_id, model, test)
        tr.finish_run(uri, run_id)
    except BaseException as exc:
        tr.fail_run(uri, run_id, exc)
        raise
    return {
        "run_id": run_id,
        "run_name": trained["run_name"],
        "model": cfg.model,
        "cell": cell,
        "variant": cfg.variant,
        "seed": cfg.train.seed,
        "best_epoch": trained["best_epoch"],
        **trained["best_valid"],
        **metrics,
    }


def cross_fold_means(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean of ``keys`` over the ``<cell>/fold<i>`` runs of each cell (empty without folds)."""
    import math

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "/fold" in str(r.get("cell", "")):
            groups.setdefault(r["cell"].rsplit("/fold", 1)[0], []).append(r)
    out = []
    for cell, members in groups.items():
        mean = {}
        for k in keys:
            values = [
                float(m[k]) for m in members if m.get(k) is not None and not math.isnan(float(m[k]))
            ]
            mean[k] = sum(values) / len(values) if values else float("nan")
        out.append({"cell": cell, "n": len(members), **mean})
    return out


@task(name="summarize")
def summarize_task(
    rows: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    tracking: dict[str, str],
    parent_run_id: str,
    data_ref: dict[str, Any],
) -> dict[str, Any]:
    """The parent run's summary table (CSV + Markdown) of every child's test metrics."""
    from tasks.metrics import HEADLINE

    uri = tracking["uri"]
    headline = [f"test/{m}" for m in HEADLINE[data_ref["task"]]]
    table = [
        {
            "run": r["run_name"],
            "run_id": r["run_id"],
            "best_epoch": r["best_epoch"],
            **{k: r.get(k) for k in headline},
        }
        for r in rows
    ]
    table += [
        {"run": f["run_name"], "run_id": "", "best_epoch": "", "error": f["error"]}
        for f in failures
    ]
    cv = cross_fold_means(rows, headline)
    if cv:  # k-fold CV: the mean over folds (and seeds) per cell is the reported figure
        table += [
            {
                "run": f"{row['cell']} (mean of {row['n']} fold runs)",
                "run_id": "",
                "best_epoch": "",
                **{k: row[k] for k in headline},
            }
            for row in cv
        ]
        for row in cv:
            tr.log_metrics(uri, parent_run_id, {f"cv/{row['cell']}/{k}": row[k] for k in headline})
    tr.log_table_artifacts(uri, parent_run_id, table, "summary")
    tr.set_tags(
        uri,
        parent_run_id,
        {"msaflow.children": len(rows), "msaflow.failed_children": len(failures)},
    )
    tr.finish_run(uri, parent_run_id)  # failures are recorded on the children and tagged here
    return {"rows": table}
