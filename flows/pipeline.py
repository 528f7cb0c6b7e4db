"""The ``pipeline`` flow: features -> one training task per (model, cell, seed) -> evaluation -> summary.

Flows only wire tasks. The tasks live in ``flows/tasks.py`` and call the Prefect-free building
blocks in ``tasks/``. A *cell* is one column of a results table: an ablation variant plus optional
overrides (e.g. ``sgm`` with ``modulation_epochs=15``); the plain pipeline's cells are its variants.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import (
    Cell,
    evaluate_task,
    make_folds,
    open_parent_run,
    prepare_data,
    summarize_task,
    train_task,
)
from msaflow.settings import default_tracking_uri
from tasks.config import ConfigError, load_overrides_file, resolve_run_config
from tasks.tracking import check_tracking, ensure_experiment


def resolve_cells(model: str, variants: list[str] | None, cells: list[dict] | None) -> list[Cell]:
    from models import get_spec

    if cells:
        return [Cell(**c) for c in cells]
    spec = get_spec(model)
    names = variants or list(spec.variants)
    unknown = [v for v in names if v not in spec.variants]
    if unknown:
        raise ConfigError(f"model {model!r} has no variant(s) {unknown}; expected some of {list(spec.variants)}")
    return [Cell(name=v, variant=v) for v in names]


def run_grid(
    *,
    data_ref: dict[str, Any],
    model: str,
    cells: list[Cell],
    seeds: list[int],
    preset: str,
    model_overrides: dict[str, Any],
    train_overrides: dict[str, Any],
    tracking: dict[str, str],
    parent_run_id: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Submit train -> evaluate for every (cell, seed); a failure never loses the others' results."""
    jobs = []
    for cell in cells:
        for seed in seeds:
            cfg = resolve_run_config(
                model, cell.variant, preset,
                model_overrides={**model_overrides, **cell.overrides.get("model", {})},
                train_overrides={**train_overrides, **cell.overrides.get("train", {}), "seed": seed},
                input_spec=data_ref["input_spec"],
            )
            trained = train_task.with_options(task_run_name=f"train-{model}-{cell.name}-seed{seed}").submit(
                cfg, cell.name, data_ref, tracking, parent_run_id)
            evaluated = evaluate_task.with_options(task_run_name=f"evaluate-{model}-{cell.name}-seed{seed}").submit(
                trained, cfg, cell.name, data_ref, tracking)
            jobs.append((cfg, cell, trained, evaluated))
    rows, failures = [], []
    for cfg, cell, trained, evaluated in jobs:
        evaluated.wait()
        state = evaluated.state
        if state.is_completed():
            row = dict(evaluated.result())
            row["cached"] = trained.state.name == "Cached" and state.name == "Cached"
            rows.append(row)
        else:
            failed = trained.state if trained.state.is_failed() else state
            try:
                failed.result(raise_on_failure=True)
                message = failed.message or failed.name
            except BaseException as exc:  # noqa: BLE001 - we report, not handle
                message = f"{type(exc).__name__}: {exc}"
            failures.append({"run_name": cfg.run_name.replace(f"/{cfg.variant}/", f"/{cell.name}/"),
                             "cell": cell.name, "seed": cfg.train.seed, "error": message[:500]})
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
) -> dict[str, Any]:
    """Train and evaluate ``model`` for every variant (or cell) and seed on one dataset.

    ``folds=k`` (k >= 2) runs k-fold cross-validation split by subject (the depression task's
    protocol): every cell and seed is trained once per fold, named ``<cell>/fold<i>``.

    Returns ``{"parent_run_id", "experiment_id", "tracking_uri", "dataset", "rows", "failures"}``.
    """
    tracking_uri = tracking_uri or default_tracking_uri()
    check_tracking(tracking_uri)
    file_overrides = load_overrides_file(params_file) if params_file else {}
    model_overrides = {**file_overrides.get("model", {}), **(model_overrides or {})}
    train_overrides = {**file_overrides.get("train", {}), **(train_overrides or {})}
    if epochs is not None:
        train_overrides["epochs"] = epochs
    cell_list = resolve_cells(model, variants, cells)
    seeds = list(seeds or [1])

    data_ref = prepare_data(data, scale=scale, data_format=data_format)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    tracking = {"uri": tracking_uri, "experiment_id": experiment_id, "experiment": experiment}
    parent_run_id = open_parent_run(tracking, data_ref, model, cell_list, seeds, preset, run_kind)
    if folds == 1 or folds < 0:
        raise ConfigError(f"folds: expected 0 (no cross-validation) or k >= 2, got {folds}")
    fold_refs = make_folds(data_ref, folds) if folds else [data_ref]
    rows, failures = [], []
    for ref in fold_refs:
        fold_cells = [Cell(name=f"{c.name}/fold{ref['fold']}" if folds else c.name, variant=c.variant,
                           overrides=c.overrides) for c in cell_list]
        got, failed = run_grid(
            data_ref=ref, model=model, cells=fold_cells, seeds=seeds, preset=preset,
            model_overrides=model_overrides, train_overrides=train_overrides, tracking=tracking,
            parent_run_id=parent_run_id,
        )
        rows += got
        failures += failed
    summarize_task(rows, failures, tracking, parent_run_id, data_ref)
    return {
        "parent_run_id": parent_run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri,
        "experiment": experiment, "dataset": data_ref, "rows": rows, "failures": failures,
    }
