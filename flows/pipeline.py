"""The ``pipeline`` flow: features -> one training task per (model, cell, seed) -> evaluation
-> summary.

Flows only wire tasks. The tasks live in ``tasks/`` (``prepare``, ``run``, ``summary``), each a
plain function with its ``@task`` beside it. A *cell* is one column of a results table: an ablation
variant plus optional overrides (e.g. ``sgm`` with ``modulation_epochs=15``); the plain pipeline's
cells are its variants.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from msaflow.devices import GPU_TAG, uses_cuda
from msaflow.flows.errors import quiet_user_errors
from msaflow.models.spec import Cell  # a table's column; defined with the tables
from msaflow.settings import default_tracking_uri
from msaflow.tasks import tracking as tr
from msaflow.tasks.checks import check_pipeline_inputs
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.prepare import make_folds, resolve_source
from msaflow.tasks.refs import DataRef, Tracking
from msaflow.tasks.run import evaluate_task, open_parent_run, run_key, train_task
from msaflow.tasks.summary import summarize_task
from msaflow.tasks.tracking import check_tracking, ensure_experiment

quiet_user_errors()  # every flow's user errors stay one line (flows/errors.py)


def _submit_train(
    cfg,
    cell: Cell,
    data_ref: DataRef,
    tracking: Tracking,
    parent_run_id: str,
    refresh: bool,
):
    """``refresh`` bypasses (and rewrites) Prefect's cache."""
    opts: dict[str, Any] = {"refresh_cache": True} if refresh else {}
    return train_task.with_options(
        task_run_name=f"train-{_task_name(cfg, cell)}", tags=train_tags(cfg, cell), **opts
    ).submit(cfg, cell.name, data_ref, tracking, parent_run_id, fresh=refresh)


def _submit_evaluate(
    trained, cfg, cell: Cell, data_ref: DataRef, tracking: Tracking, refresh: bool
):
    opts: dict[str, Any] = {"refresh_cache": True} if refresh else {}
    return evaluate_task.with_options(
        task_run_name=f"evaluate-{_task_name(cfg, cell)}", tags=run_tags(cfg, cell), **opts
    ).submit(trained, cfg, cell.name, data_ref, tracking)


def run_tags(cfg, cell: Cell) -> set[str]:
    """Prefect tags of a run's tasks: what a concurrency limit or a UI filter selects on
    (``prefect concurrency-limit create model:mult 1``)."""
    return {
        "msaflow",
        f"model:{cfg.model}",
        f"variant:{cfg.variant}",
        f"cell:{cell.name}",
        f"seed:{cfg.train.seed}",
    }


def train_tags(cfg, cell: Cell) -> set[str]:
    """A training's tags: ``run_tags``, plus ``gpu`` when it trains on CUDA (judged where the flow
    runs), which the tag concurrency limit of ``msaflow serve --setup-pool`` caps at one per GPU."""
    return run_tags(cfg, cell) | ({GPU_TAG} if uses_cuda(cfg.train.device) else set())


def _task_name(cfg, cell: Cell) -> str:
    return f"{cfg.model}-{cell.name}-seed{cfg.train.seed}"


def _submit(
    cfg,
    cell: Cell,
    data_ref: DataRef,
    tracking: Tracking,
    parent_run_id: str,
    refresh: bool,
):
    """train -> evaluate for one config."""
    trained = _submit_train(cfg, cell, data_ref, tracking, parent_run_id, refresh)
    return trained, _submit_evaluate(trained, cfg, cell, data_ref, tracking, refresh)


def _cached_run_gone(trained, tracking: Tracking) -> bool:
    """A cache hit whose MLflow run was deleted since (e.g. in the UI): the result must be
    redone."""
    if trained.state.name != "Cached" or not trained.state.is_completed():
        return False
    return not tr.run_is_active(tracking.uri, trained.result()["run_id"])


def _runner_threads() -> int | None:
    """The running flow's thread-pool size (None for other task runners)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    n = getattr(getattr(ctx, "task_runner", None), "_max_workers", None)
    return n if isinstance(n, int) and n > 0 else None


def run_grid(
    *,
    data_ref: DataRef,
    model: str,
    cells: list[Cell],
    seeds: list[int],
    preset: str,
    model_overrides: dict[str, Any],
    train_overrides: dict[str, Any],
    tracking: Tracking,
    parent_run_id: str,
    force: bool = False,
    link_cached: bool = False,
    workers: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Submit train -> evaluate for every (cell, seed); a failure never loses the others' results.

    ``workers`` trainings are in flight at once; by default as many as the flow's thread pool has
    threads (every one for another task runner, e.g. Dask, whose scheduler places them).

    ``force`` retrains everything (Prefect's ``refresh_cache`` on both tasks, checkpoints cleared).
    A cache hit whose MLflow run has been deleted is retrained the same way. ``link_cached`` gives
    every cached result that lives under another parent a link child in this parent
    (``tracking.link_cached_run``; its id in the row's ``linked_run_id``), so the parent shows all
    its results.
    """
    configs = []
    for cell in cells:
        for seed in seeds:
            cfg = resolve_run_config(
                cell.model or model,  # a comparison table's cell may be another model family
                cell.variant,
                preset,
                model_overrides={**model_overrides, **cell.overrides.get("model", {})},
                train_overrides={
                    **train_overrides,
                    **cell.overrides.get("train", {}),
                    "seed": seed,
                },
                input_spec=data_ref.input_spec,
                data_kind=data_ref.data_kind,
                class_names=data_ref.class_names,
            )
            configs.append((cfg, cell))
    # At most `workers` trainings in flight, each one's evaluation submitted as it ends: a task
    # waiting for its inputs holds a pool thread, so train1, evaluate1, train2, ... submitted at
    # once would train one run at a time, and every training submitted first would leave every
    # run unfinished (unevaluated) until the last training ends.
    # Two cells can resolve to one config (e.g. Table 3's windows at a tiny --epochs): they share
    # a run key, so one checkpoint folder and one MLflow run. Such a run waits until its twin's
    # training ends and then resumes the finished checkpoint instead of training beside it.
    jobs: list[list[Any]] = []
    in_flight: dict[Any, list[Any]] = {}
    busy_keys: dict[Any, str] = {}
    waiting = [(cfg, cell, run_key(cfg, data_ref, tracking)) for cfg, cell in configs]
    capacity = max(1, workers or _runner_threads() or len(configs))
    while True:
        for item in list(waiting):
            if len(in_flight) >= capacity:
                break
            cfg, cell, key = item
            if key in busy_keys.values():
                continue
            waiting.remove(item)
            job = [cfg, cell, _submit_train(cfg, cell, data_ref, tracking, parent_run_id, force)]
            jobs.append(job)
            in_flight[job[2]] = job
            busy_keys[job[2]] = key
        if not in_flight:
            break
        done = next(as_completed(list(in_flight)))
        cfg, cell, trained = job = in_flight.pop(done)
        busy_keys.pop(done)
        job.append(_submit_evaluate(trained, cfg, cell, data_ref, tracking, force))
    for job in jobs:
        cfg, cell, trained, evaluated = job
        evaluated.wait()
        if _cached_run_gone(trained, tracking):
            job[2:] = _submit(cfg, cell, data_ref, tracking, parent_run_id, refresh=True)
    rows, failures = [], []
    for cfg, cell, trained, evaluated in jobs:
        evaluated.wait()
        state = evaluated.state
        if state.is_completed():
            row = dict(evaluated.result())
            row["cached"] = trained.state.name == "Cached" and state.name == "Cached"
            if row["cached"] and link_cached:
                row["linked_run_id"] = tr.link_cached_run(
                    tracking.uri, tracking.experiment_id, parent_run_id, row["run_id"]
                )
            rows.append(row)
        else:
            failed = trained.state if trained.state.is_failed() else state
            try:
                failed.result(raise_on_failure=True)
                message = failed.message or failed.name
            except BaseException as exc:  # noqa: BLE001 - we report, not handle
                message = f"{type(exc).__name__}: {exc}"
            failures.append(
                {
                    "run_name": cfg.run_name_for(cell.name),
                    "cell": cell.name,
                    "seed": cfg.train.seed,
                    "error": message[:5000],  # as the run's msaflow.error tag
                }
            )
    return rows, failures


@flow(name="pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(
    data: str | None = None,
    model: str = "mmafnet",
    variants: list[str] | None = None,
    seeds: list[int] | None = None,
    preset: str = "quick",
    epochs: int | None = None,
    experiment: str = "msaflow",
    tracking_uri: str | None = None,
    params_file: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    cells: list[dict[str, Any]] | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    run_kind: str = "pipeline",
    folds: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Train and evaluate ``model`` for every variant (or cell) and seed on one dataset.

    ``folds=k`` (k >= 2) runs k-fold cross-validation split by subject (the depression task's
    protocol): every cell and seed is trained once per fold, named ``<cell>/fold<i>``.
    ``force`` retrains what the cache holds. Cached results of an earlier run are linked into this
    run's parent (``run_grid``). The parent run ends FAILED on any error after it opened.

    Returns ``{"parent_run_id", "experiment_id", "tracking_uri", "dataset", "rows", "failures"}``.
    """
    inputs = check_pipeline_inputs(
        data=data,
        model=model,
        variants=variants,
        seeds=seeds,
        preset=preset,
        epochs=epochs,
        params_file=params_file,
        model_overrides=model_overrides,
        train_overrides=train_overrides,
        cells=cells,
        scale=scale,
        data_format=data_format,
        folds=folds,
    )
    cell_list, seeds = inputs["cells"], inputs["seeds"]
    tracking_uri = tracking_uri or default_tracking_uri()
    check_tracking(tracking_uri)

    data_ref = resolve_source(data, scale=scale, data_format=data_format)
    fold_refs = make_folds(data_ref, folds) if folds else [data_ref]  # may fail: before the parent
    experiment_id = ensure_experiment(tracking_uri, experiment)
    tracking = Tracking(uri=tracking_uri, experiment_id=experiment_id, experiment=experiment)
    parent_run_id = open_parent_run(tracking, data_ref, model, cell_list, seeds, preset, run_kind)
    try:
        rows, failures = [], []
        for ref in fold_refs:
            fold_cells = [
                Cell(
                    name=f"{c.name}/fold{ref.fold}" if folds else c.name,
                    variant=c.variant,
                    overrides=c.overrides,
                )
                for c in cell_list
            ]
            got, failed = run_grid(
                data_ref=ref,
                model=model,
                cells=fold_cells,
                seeds=seeds,
                preset=preset,
                model_overrides=inputs["model_overrides"],
                train_overrides=inputs["train_overrides"],
                tracking=tracking,
                parent_run_id=parent_run_id,
                force=force,
                link_cached=True,
            )
            rows += got
            failures += failed
        summarize_task(rows, failures, tracking, parent_run_id, data_ref)
    except BaseException as exc:  # never leave the parent RUNNING
        tr.fail_run(tracking_uri, parent_run_id, exc)
        raise
    return {
        "parent_run_id": parent_run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "dataset": data_ref.as_dict(),  # the result stays plain data for callers (CLI, API)
        "rows": rows,
        "failures": failures,
    }
