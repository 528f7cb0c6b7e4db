"""The ``tune`` flow: an Optuna study over a model's hyper-parameters, then the best params on test.

data -> study (create or resume) -> K workers optimise on one storage -> best params (best.yaml,
MLflow parent run) -> the best params trained and evaluated on test with several seeds through the
pipeline's own ``run_grid`` (ordinary child runs of the study's parent run).

Workers: ``workers=1`` optimises in this process; ``workers=K`` starts K processes of
``python -m flows.tune --worker SPEC.json --index i`` on the same storage. SQLite serves a few local
processes; for many workers or several machines use PostgreSQL
(``--storage postgresql+psycopg2://...``) and run the same ``msaflow tune --study NAME --trials N``
on every machine: N is the study's total.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import Cell, resolve_data
from msaflow.settings import default_tracking_uri
from tasks import tracking as tr
from tasks import tuning as tu
from tasks.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def default_study_name(
    model: str, dataset: str, metric: str, content_hash: str | None = None
) -> str:
    """``<model>-<dataset>-<hash8>-<metric>``: the dataset's content hash keeps two datasets that
    share a name (MOSI's and MOSEI's ``aligned_50.pkl``) from sharing a study by default."""
    parts = (
        [model, dataset]
        + ([content_hash[:8]] if content_hash else [])
        + [metric.removeprefix("valid/")]
    )
    return "-".join(parts)


def check_tune_inputs(
    *,
    model: str = "mmafnet",
    data: str | None = None,
    n_trials: int = 20,
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
    epochs: int | None = None,
    storage: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    train_overrides: dict[str, Any] | None = None,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
) -> dict[str, Any]:
    """Everything a user supplies to ``tune``, checked before a flow starts (the CLI calls it
    first).

    Returns the resolved ``direction``, ``variant``, ``search_space`` and ``storage_url``.
    """
    from flows.pipeline import check_preset, model_spec
    from flows.tasks import check_data
    from tasks.config import resolve_run_config

    # "auto": the data task's default selection metric, known once the data is resolved
    direction = None if metric == "auto" else tu.metric_direction(metric)  # refuses test/... early
    if n_trials < 1 or workers < 1:
        raise ConfigError("--trials and --workers must be >= 1")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs: expected >= 1, got {epochs}")
    spec_model = model_spec(model)
    variant = variant or spec_model.default_variant
    if variant not in spec_model.variants:
        raise ConfigError(
            f"model {model!r} has no variant {variant!r}; expected one of "
            f"{list(spec_model.variants)}"
        )
    check_preset(model, preset)
    resolve_run_config(
        model,
        variant,
        preset,
        train_overrides={
            **(train_overrides or {}),
            **({"epochs": epochs} if epochs is not None else {}),
        },
    )
    search_space = tu.load_search_space(model, space_file, include or (), entries=space)
    tu.make_sampler(sampler, 0)
    tu.make_pruner(pruner, epochs or 1, pruner_options)
    check_data(data, scale, data_format)
    storage_url = storage or tu.default_storage_url()
    tu.make_storage(storage_url, heartbeat_interval, grace_period)  # a bad URL fails here, clearly
    return {
        "direction": direction,
        "variant": variant,
        "search_space": search_space,
        "storage_url": storage_url,
    }


def _find_parent_run(spec: tu.StudySpec, study) -> str:
    """The study's one parent run: remembered on the study, reopened on resume, else created."""
    uri = spec.tracking_uri
    known = study.user_attrs.get("msaflow.mlflow_parent_run_id")
    if known and study.user_attrs.get("msaflow.tracking_uri") == uri:
        try:
            run = tr.client(uri).get_run(known)
            if (
                run.info.experiment_id == spec.experiment_id
                and run.info.lifecycle_stage == "active"
            ):
                tr.client(uri).update_run(known, status="RUNNING")
                return known
        except Exception:  # noqa: BLE001 - deleted/unknown run: make a new one
            pass
    run_id = tr.start_run(
        uri,
        spec.experiment_id,
        f"tune/{spec.study}",
        tags={
            "msaflow.kind": "tune",
            "optuna.study": spec.study,
            "model": spec.model,
            "preset": spec.preset,
            "dataset": Path(spec.data_path).name,
        },
    )
    tr.log_params(
        uri,
        run_id,
        {
            "study": spec.study,
            "storage": tu.mask_url(spec.storage),
            "model": spec.model,
            "variant": spec.variant,
            "preset": spec.preset,
            "metric": spec.metric,
            "direction": spec.direction,
            "n_trials": spec.n_trials,
            "sampler": spec.sampler,
            "pruner": spec.pruner,
            "seed": spec.seed,
            "epochs": spec.epochs,
            "dataset.path": spec.data_path,
        },
    )
    tr.client(uri).log_dict(run_id, spec.space, "search_space.yaml")
    study.set_user_attr("msaflow.mlflow_parent_run_id", run_id)
    study.set_user_attr("msaflow.tracking_uri", uri)
    return run_id


@task(name="create-study", cache_policy=NO_CACHE, persist_result=False)
def create_study_task(spec: tu.StudySpec) -> str:
    """Create or resume the study and its MLflow parent run; returns the parent run id."""
    study = tu.create_or_load_study(spec)
    return _find_parent_run(spec, study)


def spawn_workers(spec: tu.StudySpec, workers: int) -> list[dict[str, Any]]:
    """K worker processes on one storage; each runs until the study's total is reached."""
    with tempfile.TemporaryDirectory(prefix="msaflow-tune-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(spec.to_json())
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flows.tune", "--worker", str(spec_path), "--index", str(i)],
                cwd=ROOT,
                env=env,
            )
            for i in range(workers)
        ]
        results = []
        for i, proc in enumerate(procs):
            rc = proc.wait()
            results.append({"worker": i, "returncode": rc})
    return results


@task(name="optimize", cache_policy=NO_CACHE, persist_result=False)
def optimize_task(spec: tu.StudySpec, workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [tu.run_worker(spec, 0)]
    return spawn_workers(spec, workers)


@task(name="finalize-study", cache_policy=NO_CACHE, persist_result=False)
def finalize_task(spec: tu.StudySpec, best_path: str) -> dict[str, Any]:
    return tu.finalize_study(spec, best_path)


def _evaluate_best(
    spec: tu.StudySpec,
    summary: dict[str, Any],
    data_ref: dict[str, Any],
    tracking: dict[str, str],
    seeds: list[int],
) -> dict[str, Any]:
    from flows.pipeline import run_grid

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
    uri = tracking["uri"]
    test_keys = sorted({k for r in rows for k in r if k.startswith("test/")})
    agg: dict[str, float] = {}
    for key in test_keys:
        values = [float(r[key]) for r in rows if key in r]
        agg[f"best_{key.replace('/', '_')}_mean"] = statistics.fmean(values)
        agg[f"best_{key.replace('/', '_')}_std"] = (
            statistics.stdev(values) if len(values) > 1 else 0.0
        )
    if agg:
        tr.log_metrics(uri, spec.parent_run_id, agg)
    table = [
        {
            "run": r["run_name"],
            "run_id": r["run_id"],
            "seed": r["seed"],
            **{k: r.get(k) for k in test_keys},
        }
        for r in rows
    ]
    table += [{"run": f["run_name"], "seed": f["seed"], "error": f["error"]} for f in failures]
    tr.log_table_artifacts(uri, spec.parent_run_id, table, "best_test")
    return {"rows": rows, "failures": failures, "aggregate": agg}


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

    data_ref = resolve_data(data, scale=scale, data_format=data_format)
    if metric == "auto":  # valid/mae for sentiment and depression, valid/f1_weighted for emotion
        from tasks.metrics import DEFAULT_SELECTION

        metric = DEFAULT_SELECTION[data_ref["task"]][0]
        direction = tu.metric_direction(metric)
    experiment_id = tr.ensure_experiment(tracking_uri, experiment)
    tracking = {"uri": tracking_uri, "experiment_id": experiment_id, "experiment": experiment}
    name = study or default_study_name(model, data_ref["name"], metric, data_ref["manifest_hash"])
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
        data_path=data_ref["path"],
        dataset_hash=data_ref["manifest_hash"],
        data_task=data_ref["task"],
        input_spec=data_ref["input_spec"],
        class_names=data_ref["class_names"],
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
        evaluation = None
        if summary["best_params"] is not None and summary["finished"] >= n_trials and eval_seeds:
            evaluation = _evaluate_best(spec, summary, data_ref, tracking, eval_seeds)
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
        "dataset": data_ref,
        "evaluation": evaluation,
    }


def _worker_main(argv: list[str] | None = None) -> int:
    """``python -m flows.tune --worker SPEC.json --index I``: one optimize loop, no Prefect."""
    from msaflow.settings import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(prog="python -m flows.tune")
    parser.add_argument(
        "--worker", required=True, help="StudySpec JSON file written by the tune flow"
    )
    parser.add_argument(
        "--index", type=int, default=0, help="worker index (sampler seed = seed + index)"
    )
    args = parser.parse_args(argv)
    spec = tu.StudySpec.from_json(Path(args.worker).read_text())
    result = tu.run_worker(spec, args.index)
    print(f"[{spec.study}] worker {args.index} done: {result}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main())
