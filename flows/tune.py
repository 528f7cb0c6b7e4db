"""The ``tune`` flow: an Optuna study over a model's hyper-parameters, then the best params on test.

data -> study (create or resume) -> K workers optimise on one storage -> best params (best.yaml,
MLflow parent run) -> the best params trained and evaluated on test with several seeds through the
pipeline's own ``run_grid`` (ordinary child runs of the study's parent run) -> the best of those on
the study's validation metric registered as ``models:/msaflow-<experiment>-<model>@best``
(``tasks.model_registry``; trials keep no weights, so these runs are the study's models).

Workers: ``workers=1`` optimises in this process; ``workers=K`` starts K processes of
``python -m msaflow.tasks.tune --worker SPEC.json --index i`` on the same storage
(``python -m msaflow.flows.tune`` takes the same arguments). SQLite serves a few local
processes; for many workers or several machines use PostgreSQL
(``--storage postgresql+psycopg2://...``) and run the same ``msaflow tune --study NAME --trials N``
on every machine: N is the study's total.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from msaflow.flows.errors import quiet_user_errors
from msaflow.models.spec import Cell
from msaflow.settings import default_tracking_uri
from msaflow.tasks import tracking as tr
from msaflow.tasks import tuning as tu
from msaflow.tasks.checks import check_tune_inputs
from msaflow.tasks.model_registry import register_best_task
from msaflow.tasks.prepare import resolve_source
from msaflow.tasks.refs import DataRef, Tracking
from msaflow.tasks.tune import (
    create_study_task,
    default_study_name,
    finalize_task,
    log_best_test,
    optimize_task,
    worker_main,
)

quiet_user_errors()  # every flow's user errors stay one line (flows/errors.py)


def _evaluate_best(
    spec: tu.StudySpec,
    summary: dict[str, Any],
    data_ref: DataRef,
    tracking: Tracking,
    seeds: list[int],
) -> dict[str, Any]:
    """The best params trained and evaluated on test with ``seeds``, as children of the study's
    parent (the pipeline's ``run_grid``); their mean and std go to the parent
    (``log_best_test``)."""
    from msaflow.flows.pipeline import run_grid

    best = summary["best_params"] or {}
    train_overrides = {
        **{k: v for k, v in spec.train_overrides.items() if k != "num_threads"},
        **best.get("train", {}),
    }
    if spec.epochs is not None:
        train_overrides["epochs"] = spec.epochs
    rows, failures = run_grid(
        data_ref=data_ref,
        model=spec.model,
        cells=[Cell(name="best", variant=spec.variant)],
        seeds=seeds,
        preset=spec.preset,
        model_overrides=best.get("model", {}),
        train_overrides=train_overrides,
        tracking=tracking,
        parent_run_id=spec.parent_run_id,
    )
    return log_best_test(rows, failures, tracking, spec.parent_run_id)


@flow(name="tune", task_runner=ThreadPoolTaskRunner(max_workers=1))
def tune(
    model: str = "mmafnet",
    data: str | None = None,
    epochs: int | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    metric: str = "auto",
    sampler: str = "tpe",
    pruner: str = "median",
    pruner_options: dict[str, Any] | None = None,
    space_file: str | None = None,
    space: dict[str, Any] | None = None,
    include: list[str] | None = None,
    preset: str = "quick",
    variant: str | None = None,
    experiment: str = "msaflow-tune",
    tracking_uri: str | None = None,
    seed: int = 0,
    eval_seeds: list[int] | None = None,
    out: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    train_overrides: dict[str, Any] | None = None,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
) -> dict[str, Any]:
    """Tune ``model`` on train/valid; export and log the best params; evaluate them on test.

    ``n_trials`` is the study's total of finished (complete + pruned) trials, shared by all workers
    and restarts. ``eval_seeds=[]`` skips the test evaluation. Returns the study summary, the
    best.yaml path and the evaluation rows.
    """
    checked = check_tune_inputs(
        model=model,
        data=data,
        n_trials=n_trials,
        workers=workers,
        metric=metric,
        sampler=sampler,
        pruner=pruner,
        pruner_options=pruner_options,
        space_file=space_file,
        space=space,
        include=include,
        preset=preset,
        variant=variant,
        epochs=epochs,
        storage=storage,
        scale=scale,
        data_format=data_format,
        train_overrides=train_overrides,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    direction, variant = checked["direction"], checked["variant"]
    search_space, storage_url = checked["search_space"], checked["storage_url"]
    tracking_uri = tracking_uri or default_tracking_uri()
    tr.check_tracking(tracking_uri)
    eval_seeds = [1, 2, 3] if eval_seeds is None else list(eval_seeds)

    data_ref = resolve_source(data, scale=scale, data_format=data_format)
    if metric == "auto":  # valid/mae for sentiment and depression, valid/f1_weighted for emotion
        from msaflow.tasks.metrics import DEFAULT_SELECTION

        metric = DEFAULT_SELECTION[data_ref.data_kind][0]
        direction = tu.metric_direction(metric)
    experiment_id = tr.ensure_experiment(tracking_uri, experiment)
    tracking = Tracking(uri=tracking_uri, experiment_id=experiment_id, experiment=experiment)
    name = study or default_study_name(model, data_ref.name, metric, data_ref.manifest_hash)
    overrides = dict(train_overrides or {})
    if workers > 1 and "num_threads" not in overrides:
        overrides["num_threads"] = max(1, (os.cpu_count() or 1) // workers)
    spec = tu.StudySpec(
        study=name,
        storage=storage_url,
        model=model,
        variant=variant,
        preset=preset,
        metric=metric,
        n_trials=n_trials,
        space=tu.space_to_dict(search_space),
        data_path=data_ref.path,
        dataset_hash=data_ref.manifest_hash,
        data_kind=data_ref.data_kind,
        input_spec=data_ref.input_spec,
        class_names=data_ref.class_names,
        epochs=epochs,
        train_overrides=overrides,
        sampler=sampler,
        pruner=pruner,
        pruner_options=dict(pruner_options or {}),
        seed=seed,
        timeout=timeout,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    spec.parent_run_id = create_study_task(spec)
    try:
        worker_results = optimize_task(spec, workers)
        best_path = out or str(tu.default_best_path(name))
        summary = finalize_task(spec, best_path)
        evaluation, registered = None, []
        if summary["best_params"] is not None and summary["finished"] >= n_trials and eval_seeds:
            evaluation = _evaluate_best(spec, summary, data_ref, tracking, eval_seeds)
            # Trials keep no weights: the best params' runs are the study's models. The best of
            # them on the study's validation metric is models:/msaflow-<experiment>-<model>@best.
            registered = register_best_task(
                tracking_uri,
                experiment,
                evaluation["rows"],
                kind="tune",
                parent_run_id=spec.parent_run_id,
                metric=metric,
                mode="min" if direction == "minimize" else "max",
                extra_tags={"optuna.study": name, "optuna.best_trial": summary.get("best_trial")},
            )
    except BaseException as exc:
        tr.fail_run(tracking_uri, spec.parent_run_id, exc)
        raise
    failed_workers = [w for w in worker_results if w.get("returncode", 0) != 0]
    if failed_workers:
        tr.set_tags(
            tracking_uri, spec.parent_run_id, {"msaflow.failed_workers": len(failed_workers)}
        )
    tr.finish_run(tracking_uri, spec.parent_run_id)
    return {
        **summary,
        "direction": direction,
        "workers": worker_results,
        "failed_workers": failed_workers,
        "parent_run_id": spec.parent_run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "dataset": data_ref.as_dict(),  # the result stays plain data for callers (CLI, API)
        "evaluation": evaluation,
        "registered": registered,
    }


def _worker_main(argv: list[str] | None = None) -> int:
    """``python -m msaflow.flows.tune --worker SPEC.json --index I``: one optimize loop, no Prefect
    (``tasks.tune.worker_main``; the tune flow's own workers run
    ``python -m msaflow.tasks.tune``)."""
    return worker_main(argv, prog="python -m msaflow.flows.tune")


if __name__ == "__main__":
    raise SystemExit(_worker_main())
