"""The ``reproduce`` flow: one of the papers' tables, several seeds, statistics and a report.

The tables live with their models: a model file's ``SPEC.tables`` maps a name to a ``TableSpec``
(``models/spec.py``) that names the model, its cells (variants plus config overrides), the baseline
each cell is compared with, and the paper's table whose numbers go beside ours. ``TABLES`` here is
all of them, from the registry. Adding a table (or a model's ablation) means adding one entry to
its model's ``SPEC``.

The flow reuses the pipeline's machinery: ``resolve_source`` -> ``run_grid`` (train -> evaluate per
(cell, seed), content-cached) -> ``summarize_task``; then the report is built from MLflow alone
(``tasks.reproduce.report_task``), logged to the parent run and written to a file, and the best run
per model family on validation is registered as ``models:/msaflow-<experiment>-<model>@best``
(``tasks.model_registry``).

Why not call the ``pipeline`` flow as a subflow: it opens a new parent run every time, so a resumed
reproduction would scatter its runs over several parents. Here the parent is keyed on what defines
the reproduction (``tasks.reproduce.reproduction_key``: table, data, preset, epochs, cells, code
version; not the seeds), so re-running --
after an interruption, a failure, or with more seeds -- reopens the same parent; finished runs come
from Prefect's cache and an interrupted child resumes into its own MLflow run and checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from msaflow.flows.errors import quiet_user_errors
from msaflow.flows.pipeline import run_grid
from msaflow.models import TableSpec
from msaflow.models.spec import Cell
from msaflow.settings import default_tracking_uri
from msaflow.tasks import tracking as tr
from msaflow.tasks.checks import check_preset, get_table, load_params_file
from msaflow.tasks.config import ConfigError, resolve_run_config
from msaflow.tasks.model_registry import register_best_task
from msaflow.tasks.prepare import resolve_source
from msaflow.tasks.refs import DataRef, Tracking
from msaflow.tasks.reproduce import (
    membership_tags,
    open_or_resume_parent,
    report_task,
    reproduction_key,
    thread_share,
)
from msaflow.tasks.summary import summarize_task

quiet_user_errors()  # every flow's user errors stay one line (flows/errors.py)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


@flow(name="reproduce", task_runner=ThreadPoolTaskRunner(max_workers=default_workers()))
def reproduce_flow(
    table: str,
    data: str | None = None,
    seeds: list[int] | None = None,
    epochs: int | None = None,
    preset: str = "quick",
    experiment: str | None = None,
    tracking_uri: str | None = None,
    out: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    train_overrides: dict[str, Any] | None = None,
    workers: int | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every (cell, seed) of ``table`` as children of one parent run, then report.

    ``model_overrides``/``train_overrides`` (``--params``) apply to every cell; a cell's own
    overrides (its variant, Table 3's modulation epochs) win over them.
    """
    spec = get_table(table)
    workers = workers or default_workers()  # must match the task runner's max_workers
    tracking_uri = tracking_uri or default_tracking_uri()
    tr.check_tracking(tracking_uri)
    experiment = experiment or f"reproduce-{table}"
    seeds = list(seeds or [1])
    train_overrides = dict(train_overrides or {})
    model_overrides = dict(model_overrides or {})
    if epochs is not None:
        train_overrides["epochs"] = epochs
    first = spec.cells[0]
    resolved_epochs = resolve_run_config(
        spec.model_of(first),
        first.variant,
        preset,
        model_overrides=model_overrides,
        train_overrides=train_overrides,
    ).train.epochs
    cells = spec.resolve_cells(resolved_epochs)

    data_ref = resolve_source(data, scale=scale, data_format=data_format)
    experiment_id = tr.ensure_experiment(tracking_uri, experiment)
    tracking = Tracking(uri=tracking_uri, experiment_id=experiment_id, experiment=experiment)
    key = reproduction_key(
        table, spec, cells, data_ref, preset, resolved_epochs, train_overrides, model_overrides
    )
    parent_run_id, resumed = open_or_resume_parent(
        tracking, key, data_ref, spec, cells, seeds, preset
    )
    try:
        return _reproduce_into(
            parent_run_id,
            resumed,
            key,
            table,
            spec,
            cells,
            seeds,
            preset,
            resolved_epochs,
            data_ref,
            tracking,
            workers,
            out,
            model_overrides,
            train_overrides,
        )
    except BaseException as exc:  # never leave the parent RUNNING
        tr.fail_run(tracking_uri, parent_run_id, exc)
        raise


def _reproduce_into(
    parent_run_id: str,
    resumed: bool,
    key: str,
    table: str,
    spec: TableSpec,
    cells: list[Cell],
    seeds: list[int],
    preset: str,
    resolved_epochs: int,
    data_ref: DataRef,
    tracking: Tracking,
    workers: int,
    out: str | None,
    model_overrides: dict[str, Any],
    train_overrides: dict[str, Any],
) -> dict[str, Any]:
    """The reproduction's body, once its parent run is open."""
    tracking_uri, experiment = tracking.uri, tracking.experiment
    experiment_id = tracking.experiment_id
    # Tags, not params: params are immutable and the seeds may grow when a reproduction is extended.
    tr.set_tags(
        tracking_uri,
        parent_run_id,
        {
            "msaflow.reproduce_key": key,
            "msaflow.table": table,
            "msaflow.paper": spec.paper or "",
            "msaflow.cells": json.dumps([c.name for c in cells]),
            "msaflow.baselines": json.dumps(spec.baselines()),
            "msaflow.cell_overrides": json.dumps({c.name: c.overrides for c in cells}),
            "msaflow.seeds": ",".join(map(str, seeds)),
            "msaflow.epochs": resolved_epochs,
            "msaflow.task": data_ref.data_kind,  # the tag keeps its name: reports read old runs
            "msaflow.workers": workers,
            "msaflow.params": json.dumps({"model": model_overrides, "train": train_overrides}),
        },
    )

    with thread_share(workers):  # concurrent runs share the cores
        rows, failures = run_grid(
            data_ref=data_ref,
            model=spec.model,
            cells=cells,
            seeds=seeds,
            preset=preset,
            model_overrides=model_overrides,
            train_overrides=train_overrides,
            tracking=tracking,
            parent_run_id=parent_run_id,
        )
    summarize_task(rows, failures, tracking, parent_run_id, data_ref)
    for row in rows:
        tr.set_tags(tracking_uri, row["run_id"], {"msaflow.table": table})
    # Which runs make up this reproduction: a cache hit may belong to an earlier parent.
    tr.set_tags(tracking_uri, parent_run_id, membership_tags([r["run_id"] for r in rows]))

    report_paths, report_error = report_task(tracking, parent_run_id, out)
    # The best run on validation, per model family, as models:/msaflow-<experiment>-<model>@best
    registered = register_best_task(
        tracking_uri,
        experiment,
        rows,
        kind="reproduce",
        parent_run_id=parent_run_id,
        extra_tags={"msaflow.table": table, "msaflow.reproduce_key": key},
    )
    return {
        "table": table,
        "parent_run_id": parent_run_id,
        "resumed": resumed,
        "experiment_id": experiment_id,
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "dataset": data_ref.as_dict(),  # the result stays plain data for callers (CLI, API)
        "rows": rows,
        "failures": failures,
        "report": report_paths,
        "report_error": report_error,
        "registered": registered,
    }


def reproduce(
    table: str,
    data: str | None = None,
    seeds: int | list[int] = 5,
    epochs: int | None = None,
    preset: str = "quick",
    experiment: str | None = None,
    tracking_uri: str | None = None,
    max_workers: int | None = None,
    out: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    train_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    params_file: str | None = None,
) -> dict[str, Any]:
    """Reproduce ``table`` with ``seeds`` seeds (an int n means seeds 1..n), up to ``max_workers``
    runs at a time (default ``min(2, cpu_count)``). ``params_file`` (``--params``, as ``msaflow
    run`` reads it: ``{model: {...}, train: {...}}``) and ``model_overrides``/``train_overrides``
    apply to every cell. Returns the flow's result dict."""
    from msaflow.tasks.prepare import check_data

    spec = get_table(table)  # fail on a bad table, preset, params or data before Prefect starts
    check_data(data, scale, data_format)
    for model in spec.models:  # a comparison table needs the preset in every model it trains
        check_preset(model, preset)
    file_overrides = load_params_file(params_file, spec.model, preset)
    model_overrides = {**file_overrides.get("model", {}), **(model_overrides or {})}
    train_overrides = {**file_overrides.get("train", {}), **(train_overrides or {})}
    for cell in spec.cells:
        resolve_run_config(
            spec.model_of(cell),
            cell.variant,
            preset,
            model_overrides={**model_overrides, **cell.overrides.get("model", {})},
            train_overrides={
                **train_overrides,
                **cell.overrides.get("train", {}),
                **({"epochs": epochs} if epochs is not None else {}),
            },
        )
    seed_list = list(range(1, seeds + 1)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError("seeds: expected at least one seed")
    workers = max_workers or default_workers()
    if workers < 1:
        raise ConfigError(f"--workers: expected >= 1, got {workers}")
    tr.check_tracking(tracking_uri or default_tracking_uri())
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return reproduce_flow.with_options(task_runner=runner, flow_run_name=f"reproduce-{table}")(
        table=table,
        data=data,
        seeds=seed_list,
        epochs=epochs,
        preset=preset,
        experiment=experiment,
        tracking_uri=tracking_uri,
        out=out,
        scale=scale,
        data_format=data_format,
        train_overrides=train_overrides,
        workers=workers,
        model_overrides=model_overrides,
    )
