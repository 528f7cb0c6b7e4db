"""One MLflow run per (model, cell, seed): the train and evaluate tasks, their cache keys, and the
flow's parent run.

Caching is keyed on content: the dataset manifest hash, the fully resolved config, the code version
and the tracking target (``run_key``). Re-running an unchanged pipeline therefore skips finished
training and evaluation (their results persist under ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``).

``train_run`` and ``evaluate_run`` are the plain functions (callable without Prefect);
``train_task`` and ``evaluate_task`` are their tasks, with retries and those cache keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from prefect import task

from msaflow.devices import lease_device, on_device, resolve
from msaflow.models.spec import Cell
from msaflow.settings import msaflow_home
from msaflow.tasks import tracking as tr
from msaflow.tasks.config import RunConfig
from msaflow.tasks.policy import code_version, retry_transient
from msaflow.tasks.progress import report as report_progress
from msaflow.tasks.refs import DataRef, Tracking


def run_key(cfg: RunConfig, data_ref: DataRef, tracking: Tracking) -> str:
    """What identifies a run's result: data, resolved config, code version and tracking target.

    The key names the run's checkpoint folder and is its MLflow tag (``msaflow.key``): the same key
    means the same result, so a re-run resumes or reuses it.
    """
    blob = "|".join(
        [
            data_ref.manifest_hash,
            cfg.fingerprint(),
            code_version(),
            tracking.uri,
            tracking.experiment_id,
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def train_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """``train_task``'s Prefect cache key: the run key and the cell."""
    return (
        "train-"
        + run_key(parameters["cfg"], parameters["data_ref"], parameters["tracking"])
        + "-"
        + parameters["cell"]
    )


def eval_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """``evaluate_task``'s Prefect cache key: the run key and the cell."""
    return (
        "evaluate-"
        + run_key(parameters["cfg"], parameters["data_ref"], parameters["tracking"])
        + "-"
        + parameters["cell"]
    )


def open_parent_run(
    tracking: Tracking,
    data_ref: DataRef,
    model: str,
    cells: list[Cell],
    seeds: list[int],
    preset: str,
    kind: str,
) -> str:
    """The flow run's MLflow parent run, tagged with its data and what extraction did; its id."""
    tags = {
        "msaflow.kind": kind,
        "model": model,
        "dataset": data_ref.name,
        "preset": preset,
        "msaflow.dataset_source": data_ref.source,
    }
    if data_ref.oracle:  # a simulation's best achievable figures, for the report
        tags["msaflow.oracle"] = json.dumps(data_ref.oracle, sort_keys=True)
    if (ex := data_ref.extraction) is not None:  # --data utterances.csv: what extraction did
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
        tracking.uri, tracking.experiment_id, f"{kind}/{model}/{data_ref.name}", tags=tags
    )
    tr.log_params(
        tracking.uri,
        run_id,
        {
            "model": model,
            "preset": preset,
            "dataset": data_ref.name,
            "dataset.path": data_ref.path,
            "dataset.manifest_hash": data_ref.manifest_hash,
            "cells": ",".join(c.name for c in cells),
            "seeds": ",".join(map(str, seeds)),
        },
    )
    return run_id


def _progress(run_name: str, epochs: int) -> Callable[[int, dict[str, float]], None]:
    def report(epoch: int, record: dict[str, float]) -> None:
        shown = {
            k: record[k]
            for k in ("train/loss/total", "valid/mae", "valid/acc7", "valid/acc")
            if k in record
        }
        text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
        report_progress(f"[{run_name}] epoch {epoch + 1}/{epochs} {text}")

    return report


def device_tags(device: str) -> dict[str, str]:
    """The training's device as MLflow tags: ``msaflow.device`` (``cuda:1``, ``cuda``, ``cpu``;
    a tag, since a retry may land on another GPU), and the process's ``CUDA_VISIBLE_DEVICES``
    when set (``cuda:0`` under ``CUDA_VISIBLE_DEVICES=2`` is physical GPU 2)."""
    import os

    tags = {"msaflow.device": resolve(device)}
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        tags["msaflow.cuda_visible_devices"] = visible
    return tags


def train_run(
    cfg: RunConfig,
    cell: str,
    data_ref: DataRef,
    tracking: Tracking,
    parent_run_id: str,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train one (model, cell, seed) into its own MLflow child run; resumes from its checkpoint.

    ``fresh`` (``--force``, or the cached run was deleted) first removes this key's checkpoints, so
    the run trains from scratch instead of resuming a finished checkpoint.
    """
    from msaflow.feature_store import load_dataset, read_manifest
    from msaflow.models import get_spec
    from msaflow.tasks.plots import learning_curves, run_trace_figures
    from msaflow.tasks.text_finetune import require_texts
    from msaflow.tasks.train import (  # looked up per call: tests patch it
        clear_checkpoints,
        train_model,
    )

    uri = tracking.uri
    key = run_key(cfg, data_ref, tracking)
    run_name = cfg.run_name_for(cell)
    run_id = tr.find_child_run(uri, tracking.experiment_id, parent_run_id, key)
    if run_id is None:
        run_id = tr.start_run(
            uri,
            tracking.experiment_id,
            run_name,
            parent_run_id=parent_run_id,
            tags={
                "msaflow.key": key,
                "msaflow.kind": "train",
                "model": cfg.model,
                "variant": cfg.variant,
                "cell": cell,
                "seed": str(cfg.train.seed),
                "dataset": data_ref.name,
                "preset": cfg.preset,
            },
        )
    else:
        tr.client(uri).update_run(run_id, status="RUNNING")
    tr.supersede_stale_runs(uri, tracking.experiment_id, key, run_id)
    ckpt = msaflow_home() / "checkpoints" / key
    if fresh:
        clear_checkpoints(ckpt)  # last.pt / best.pt only: a user's file in that folder survives
    try:
        tr.log_config(uri, run_id, cfg)
        tr.log_dataset_input(uri, run_id, read_manifest(data_ref.path), data_ref.path)
        _, splits = load_dataset(data_ref.path, splits=("train", "valid"), shared=True)
        require_texts(splits, cfg, data_ref.path)  # train.text_encoder=finetune: the error names it
        # Concurrent trainings on a multi-GPU machine each hold their own cuda:k, made this
        # thread's current CUDA device: the engine's "cuda" means it. The config keeps its device
        # (it is in the fingerprint that names the checkpoint and the cache key). CPU, memory
        # (and GPU) figures beside the epochs; the monitor is stopped however training ends.
        with (
            lease_device(cfg.train.device) as device,
            on_device(device),
            tr.system_metrics(
                uri, run_id, cfg.train.system_metrics, cfg.train.system_metrics_interval
            ),
        ):
            tr.set_tags(uri, run_id, device_tags(device))
            result = train_model(
                cfg,
                splits,
                data_kind=data_ref.data_kind,
                class_names=data_ref.class_names,
                checkpoint_dir=ckpt,
                callbacks=[_progress(run_name, cfg.train.epochs)],
                evaluate_test=False,
                # every epoch reaches MLflow as it ends: a long run is watched live in the UI
                epoch_sink=lambda epoch, *rows: tr.log_epoch_live(uri, run_id, *rows),
            )
        # what an interrupted attempt checkpointed but had not logged; nothing twice
        tr.log_missing_rows(uri, run_id, result.history, "epoch")
        tr.log_missing_rows(uri, run_id, result.step_traces, "step", skip=("epoch",))
        tr.log_missing_rows(uri, run_id, result.epoch_traces, "epoch")
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


# No static tags: the flow gives each training its own (``flows.pipeline.train_tags``), ``gpu``
# only for one that trains on CUDA, so the ``gpu`` concurrency limit never holds back CPU runs.
train_task = task(
    name="train",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
    cache_key_fn=train_cache_key,
    persist_result=True,
)(train_run)


def evaluate_run(
    trained: dict[str, Any],
    cfg: RunConfig,
    cell: str,
    data_ref: DataRef,
    tracking: Tracking,
) -> dict[str, Any]:
    """Evaluate the best epoch on test, log test metrics and the model, and close the run."""
    from msaflow.tasks.text_finetune import load_split_tensors
    from msaflow.tasks.train import evaluate, load_best_model

    uri, run_id = tracking.uri, trained["run_id"]
    try:
        # test goes through the same train-fit standardisation as in training (so does the logged
        # model's input), with its tokens when the text encoder is fine-tuned
        test, stats = load_split_tensors(data_ref.path, "test", cfg)
        model = load_best_model(trained["checkpoint_dir"], cfg)
        # the engine's own evaluation (fp32), as used for validation during training
        metrics, _, _ = evaluate(
            model,
            test,
            split="test",
            data_kind=data_ref.data_kind,
            class_names=data_ref.class_names,
            head=cfg.model_cfg.head,
            batch_size=cfg.train.eval_batch_size,
            device=next(model.parameters()).device,
        )
        tr.log_metrics(uri, run_id, metrics)
        # a pyfunc that takes the store's raw features: it applies these statistics itself
        tr.log_model(
            uri,
            run_id,
            model,
            test,
            cfg,
            stats.to_dict() if stats is not None else None,
            data_ref.class_names,
        )
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


evaluate_task = task(
    name="evaluate",
    retries=1,
    retry_condition_fn=retry_transient,
    cache_key_fn=eval_cache_key,
    persist_result=True,
)(evaluate_run)
