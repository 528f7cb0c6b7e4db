"""The ``tune`` flow's tasks: open the study and its parent run, optimise, finalise, log the best.

The study itself (space, storage, objective, results) is ``tasks.tuning``, Prefect-free; here are
the steps the flow retries or runs as units, each a plain function with its task beside it.

Workers: ``optimize(spec, 1)`` optimises in this process; ``optimize(spec, K)`` starts K processes
of ``python -m msaflow.tasks.tune --worker SPEC.json --index i`` on the same storage
(``worker_main``).
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

from prefect import task
from prefect.cache_policies import NO_CACHE

import msaflow
from msaflow.tasks import tracking as tr
from msaflow.tasks import tuning as tu
from msaflow.tasks.progress import report as report_progress
from msaflow.tasks.refs import Tracking

# The folder that holds the ``msaflow`` package (a checkout's root, or site-packages): the worker
# processes start there and import msaflow from it.
ROOT = Path(msaflow.__file__).resolve().parents[1]
WORKER_MODULE = "msaflow.tasks.tune"  # ``python -m msaflow.tasks.tune --worker ...``
_TASK: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


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


def find_parent_run(spec: tu.StudySpec, study: Any) -> str:
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


def open_study(spec: tu.StudySpec) -> str:
    """Create or resume the study and its MLflow parent run; returns the parent run id."""
    study = tu.create_or_load_study(spec)
    return find_parent_run(spec, study)


create_study_task = task(name="create-study", **_TASK)(open_study)


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
                [
                    sys.executable,
                    "-m",
                    WORKER_MODULE,
                    "--worker",
                    str(spec_path),
                    "--index",
                    str(i),
                ],
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


def optimize(spec: tu.StudySpec, workers: int) -> list[dict[str, Any]]:
    """Run the study to its total of trials: in this process, or in ``workers`` processes."""
    if workers <= 1:
        return [tu.run_worker(spec, 0)]
    return spawn_workers(spec, workers)


optimize_task = task(name="optimize", **_TASK)(optimize)


def finalize(spec: tu.StudySpec, best_path: str) -> dict[str, Any]:
    """The study's summary, best params written to ``best_path`` (``tasks.tuning``)."""
    return tu.finalize_study(spec, best_path)


finalize_task = task(name="finalize-study", **_TASK)(finalize)


def log_best_test(
    rows: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    tracking: Tracking,
    parent_run_id: str,
) -> dict[str, Any]:
    """The best params' test runs on the study's parent: mean and std per metric, and a table.

    Returns ``{"rows", "failures", "aggregate"}`` (``best_test_<metric>_mean`` / ``_std``).
    """
    from msaflow.tasks.artifacts import mlflow_pointer, publish_markdown, publish_table

    uri = tracking.uri
    test_keys = sorted({k for r in rows for k in r if k.startswith("test/")})
    agg: dict[str, float] = {}
    for key in test_keys:
        values = [float(r[key]) for r in rows if key in r]
        agg[f"best_{key.replace('/', '_')}_mean"] = statistics.fmean(values)
        agg[f"best_{key.replace('/', '_')}_std"] = (
            statistics.stdev(values) if len(values) > 1 else 0.0
        )
    if agg:
        tr.log_metrics(uri, parent_run_id, agg)
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
    tr.log_table_artifacts(uri, parent_run_id, table, "best_test")
    experiment = tracking.experiment or tracking.experiment_id
    publish_table("best-test", experiment, table, "the best params on test, per seed")
    publish_markdown(
        "results",
        experiment,
        "Best params' test runs, mean over seeds: "
        + ", ".join(
            f"{k.removeprefix('best_').removesuffix('_mean')} {v:.4f}"
            for k, v in agg.items()
            if k.endswith("_mean")
        )
        + ". "
        + mlflow_pointer(uri, tracking.experiment_id, parent_run_id),
        "the study's result",
    )
    return {"rows": rows, "failures": failures, "aggregate": agg}


def worker_main(argv: list[str] | None = None, prog: str = f"python -m {WORKER_MODULE}") -> int:
    """``python -m msaflow.tasks.tune --worker SPEC.json --index I``: one optimize loop, no
    Prefect."""
    from msaflow.settings import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument(
        "--worker", required=True, help="StudySpec JSON file written by the tune flow"
    )
    parser.add_argument(
        "--index", type=int, default=0, help="worker index (sampler seed = seed + index)"
    )
    args = parser.parse_args(argv)
    spec = tu.StudySpec.from_json(Path(args.worker).read_text())
    result = tu.run_worker(spec, args.index)
    report_progress(f"[{spec.study}] worker {args.index} done: {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
