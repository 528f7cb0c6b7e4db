"""MLflow tracking through ``MlflowClient`` and explicit run ids (safe from worker threads).

Layout: one experiment per pipeline; a parent run per pipeline/reproduction/study run; a child run
per (model, cell, seed) named ``mmafnet/sgm_ipr/seed1`` carrying params (the fully resolved config),
tags (model, variant, seed, dataset, git commit), per-epoch metrics, modulation traces as stepped
metrics, system metrics while it trains (``system/...``), test metrics, plots, the model (a
servable pyfunc, ``tasks.serving``) and the dataset manifest as a logged input.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from msaflow.settings import default_artifact_root, default_tracking_uri
from msaflow.tasks.config import RunConfig, flatten

# MLflow's advice that does not apply here: a local dataset path is unambiguous, and feature inputs
# never hold missing ints.
warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways.*")
warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")

_BATCH = 900  # MLflow accepts at most 1000 entities per log_batch


class TrackingError(RuntimeError):
    """The tracking server cannot be used; raised before any training starts."""


@cache
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())


def _probe_database(tracking_uri: str) -> None:
    """One plain connection to a PostgreSQL/MySQL backend: MLflow's own store would retry a refused
    connection for about two minutes before saying so."""
    dialect = tracking_uri.split(":", 1)[0].split("+", 1)[0]
    if dialect not in ("postgresql", "mysql"):
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri, connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


_REACHED: dict[str, float] = {}  # uri -> when this process last probed it successfully
_PROBE_TTL_S = 60.0  # a long-lived worker re-probes: a store can go away between flows


def check_tracking(tracking_uri: str) -> None:
    """Fail fast with a clear message when the tracking store is unreachable (no retry storm).

    The CLI checks before its flow starts and the flow checks again (it may be called from
    Python): a store probed successfully in the last minute is not probed again."""
    if time.monotonic() - _REACHED.get(tracking_uri, -math.inf) < _PROBE_TTL_S:
        return
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        _probe_database(tracking_uri)
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
        _REACHED[tracking_uri] = time.monotonic()
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot track"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(
            f"MLflow tracking store {tracking_uri!r} is not usable: {first}"
        ) from exc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_T = TypeVar("_T")
# One writer per process for the get-or-create writes below: threads of one process never race;
# other processes (Dask workers, tune workers) are covered by the retry.
_WRITE_LOCK = threading.Lock()


def is_collision(exc: BaseException) -> bool:
    """A write that lost a race with an identical one (a unique key inserted concurrently)."""
    from mlflow.exceptions import MlflowException

    code = getattr(exc, "error_code", "")
    text = str(exc).lower()
    return isinstance(exc, MlflowException) and (
        code == "RESOURCE_ALREADY_EXISTS"
        or "unique constraint" in text
        or "integrityerror" in text
        or "duplicate key" in text
        or "already exists" in text
    )


def idempotent(write: Callable[[], _T], attempts: int = 6) -> _T:
    """Run a get-or-create ``write`` under the process lock; retry it when it lost a race.

    MLflow's SQL store checks for an existing row, then inserts: two writers of the same row
    (the same dataset input, the same experiment name) can both see none, and the second insert
    fails with ``UNIQUE constraint failed``. Re-running the write finds the row and reuses it.
    """
    for attempt in range(attempts):
        try:
            with _WRITE_LOCK:
                return write()
        except Exception as exc:  # noqa: BLE001 - only collisions are retried
            if attempt == attempts - 1 or not is_collision(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, created (or restored) if needed; safe when several workers race."""
    c = client(tracking_uri)

    def get_or_create() -> str:
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        artifact_location = None
        if tracking_uri.startswith("sqlite:"):
            # Local default store: artifacts live beside the database, not in the cwd.
            db_dir = Path(tracking_uri.removeprefix("sqlite:///")).parent
            artifact_location = (
                (db_dir / "mlartifacts").as_uri()
                if db_dir.name
                else Path(default_artifact_root()).as_uri()
            )
        return c.create_experiment(name, artifact_location=artifact_location)

    return idempotent(get_or_create)


def start_run(
    tracking_uri: str,
    experiment_id: str,
    name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    tags = dict(tags or {})
    # mlflow.source.git.commit is where the MLflow UI shows it; msaflow.git_commit for older readers
    tags["msaflow.git_commit"] = tags["mlflow.source.git.commit"] = git_commit()
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client(tracking_uri).create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id


def find_child_run(
    tracking_uri: str, experiment_id: str, parent_run_id: str, key: str
) -> str | None:
    """An earlier attempt of the same child (same cache key) under this parent, to resume into."""
    runs = client(tracking_uri).search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`msaflow.key` = '{key}'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def run_is_active(tracking_uri: str, run_id: str) -> bool:
    """False when the run was deleted (in the UI: lifecycle stage ``deleted``) or purged."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


# Tags of the source run that describe its own attempt, not the result: never copied to a link.
_ATTEMPT_TAGS = (
    "msaflow.key",
    "msaflow.error",
    "msaflow.superseded_by",
    "msaflow.resumed_from_epoch",
)


def link_cached_run(
    tracking_uri: str, experiment_id: str, parent_run_id: str, source_run_id: str
) -> str:
    """A child of ``parent_run_id`` standing for a cached result that lives in another parent's run.

    MLflow has no run that belongs to two parents, and its UI compares the runs a parent shows. So
    an unchanged re-run gets one lightweight FINISHED child per cached result: the source's params,
    tags and final metric values (history, plots and the model stay in the source run), tagged
    ``msaflow.cached_from=<source run id>`` and described in its note. It carries no
    ``msaflow.key``, so it is never resumed into or superseded. Idempotent: an existing link is
    returned.
    """
    c = client(tracking_uri)
    src = c.get_run(source_run_id)
    if src.data.tags.get("mlflow.parentRunId") == parent_run_id:
        return source_run_id
    found = c.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
            f"tags.`msaflow.cached_from` = '{source_run_id}'"
        ),
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {
        k: v
        for k, v in src.data.tags.items()
        if not k.startswith("mlflow.") and k not in _ATTEMPT_TAGS
    }
    tags["msaflow.cached_from"] = source_run_id
    tags["mlflow.note.content"] = (
        f"Cached result: trained in run {source_run_id} (parent "
        f"{src.data.tags.get('mlflow.parentRunId', '-')}); its metric history, "
        "plots and model are there. Re-run with --force to retrain."
    )
    run_id = start_run(
        tracking_uri, experiment_id, src.info.run_name, tags=tags, parent_run_id=parent_run_id
    )
    try:
        params = [Param(k, v) for k, v in src.data.params.items()]
        for chunk in _chunks(params, 100):
            c.log_batch(run_id, params=chunk)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in src.data.metrics.items()]
        for chunk in _chunks(metrics):
            c.log_batch(run_id, metrics=chunk)
        finish_run(tracking_uri, run_id)
    except BaseException as exc:
        fail_run(tracking_uri, run_id, exc)
        raise
    return run_id


def supersede_stale_runs(tracking_uri: str, experiment_id: str, key: str, run_id: str) -> list[str]:
    """Mark other RUNNING runs of the same child (same cache key) KILLED, tagged with their
    successor.

    A process killed outright (SIGKILL, a lost machine) leaves its child RUNNING forever; the re-run
    that resumes from the same checkpoint supersedes it. Returns the ids it marked.
    """
    c = client(tracking_uri)
    stale = [
        r.info.run_id
        for r in c.search_runs(
            [experiment_id],
            filter_string=f"tags.`msaflow.key` = '{key}' and attributes.status = 'RUNNING'",
        )
        if r.info.run_id != run_id
    ]
    for old in stale:
        c.set_tag(old, "msaflow.superseded_by", run_id)
        c.set_terminated(old, status="KILLED")
    return stale


def _chunks(items: list, size: int = _BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_params(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    c = client(tracking_uri)
    existing = c.get_run(run_id).data.params
    items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for chunk in _chunks(items, 100):
        c.log_batch(run_id, params=chunk)


def log_config(tracking_uri: str, run_id: str, cfg: RunConfig) -> None:
    """The fully resolved config as params (and as JSON), plus ``model.num_params``: the trainable
    parameter count, the same key for every model family so the UI compares them."""
    from msaflow.tasks.train import count_trainable_params

    params = flatten(cfg.to_dict())
    params["model.num_params"] = count_trainable_params(cfg)
    log_params(tracking_uri, run_id, params)
    client(tracking_uri).log_dict(run_id, cfg.to_dict(), "config/resolved.json")


def log_rows(
    tracking_uri: str,
    run_id: str,
    rows: Sequence[dict[str, float]],
    step_key: str,
    skip: Sequence[str] = (),
) -> None:
    """Each row's numeric values as metrics at ``step = row[step_key]``."""
    metrics = _metrics(rows, step_key, skip, int(time.time() * 1000))
    c = client(tracking_uri)
    for chunk in _chunks(metrics):
        c.log_batch(run_id, metrics=chunk)


def log_epoch_live(
    tracking_uri: str,
    run_id: str,
    history: Sequence[dict[str, float]],
    step_traces: Sequence[dict[str, float]],
    epoch_traces: Sequence[dict[str, float]],
) -> None:
    """One epoch's metrics and traces as it ends, batched (one ``log_batch`` per 1000 values),
    so a long run can be watched and compared while it trains."""
    now = int(time.time() * 1000)
    metrics = [
        *_metrics(history, "epoch", (), now),
        *_metrics(step_traces, "step", ("epoch",), now),
        *_metrics(epoch_traces, "epoch", (), now),
    ]
    c = client(tracking_uri)
    for chunk in _chunks(metrics):
        c.log_batch(run_id, metrics=chunk)


def log_missing_rows(
    tracking_uri: str,
    run_id: str,
    rows: Sequence[dict[str, float]],
    step_key: str,
    skip: Sequence[str] = (),
) -> None:
    """``log_rows`` for the (metric, step) values the run does not have yet: after a live-logged
    training, what an interrupted attempt checkpointed but never logged, and nothing twice."""
    c = client(tracking_uri)
    keys = dict.fromkeys(k for r in rows for k in r if k != step_key and k not in skip)
    logged = {k: {m.step for m in c.get_metric_history(run_id, k)} for k in keys}
    metrics = [
        m
        for m in _metrics(rows, step_key, skip, int(time.time() * 1000))
        if m.step not in logged[m.key]
    ]
    for chunk in _chunks(metrics):
        c.log_batch(run_id, metrics=chunk)


def _metrics(
    rows: Sequence[dict[str, float]], step_key: str, skip: Sequence[str], now: int
) -> list[Metric]:
    return [
        Metric(key, float(value), now, int(row[step_key]))
        for row in rows
        for key, value in row.items()
        if key != step_key
        and key not in skip
        and isinstance(value, int | float)
        and math.isfinite(value)
    ]


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    log_rows(tracking_uri, run_id, [{"__step": step, **metrics}], "__step")


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def log_figures(tracking_uri: str, run_id: str, figures: dict[str, Any]) -> None:
    from msaflow.tasks.plots import close

    c = client(tracking_uri)
    for name, fig in figures.items():
        c.log_figure(run_id, fig, name)
        close(fig)


def log_dataset_input(tracking_uri: str, run_id: str, manifest: Any, path: str | Path) -> None:
    """The dataset manifest as a logged input (and as an artifact)."""
    import pandas as pd
    from mlflow.data import from_pandas

    info = manifest.to_dict()
    frame = pd.DataFrame([{"split": s, "rows": n} for s, n in info["splits"].items()])
    dataset = from_pandas(
        frame, source=str(path), name=info["name"], digest=manifest.content_hash[:16]
    )
    c = client(tracking_uri)
    from mlflow.entities import DatasetInput, InputTag

    entity = DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")]
    )
    # Concurrent training tasks log the same dataset (one row per experiment, name and digest).
    idempotent(lambda: c.log_inputs(run_id, datasets=[entity]))
    c.log_dict(run_id, info, "dataset/manifest.json")


def log_model(
    tracking_uri: str,
    run_id: str,
    model: Any,
    example_batch: dict[str, Any],
    cfg: RunConfig,
    standardization: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> str:
    """The trained module as a servable MLflow pyfunc named ``model`` (``tasks.serving``: logged
    from code, weights as plain tensors, inputs the store's raw features); its ``models:/`` URI.

    ``example_batch`` gives each modality's shape; ``standardization`` is the train-fit statistics
    the run applied (``predict`` applies them itself)."""
    from msaflow.tasks.serving import log_pyfunc

    return log_pyfunc(tracking_uri, run_id, model, cfg, example_batch, standardization, class_names)


@contextmanager
def system_metrics(
    tracking_uri: str, run_id: str, enabled: bool = True, interval: float = 10.0
) -> Iterator[None]:
    """MLflow's system-metrics monitor on ``run_id`` while the block runs (``train.system_metrics``,
    sampled every ``train.system_metrics_interval`` seconds; ``MLFLOW_SYSTEM_METRICS_SAMPLING_
    INTERVAL`` wins, as in MLflow).

    ``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``, disk and
    network, and ``system/gpu_<i>_...`` where nvidia-ml-py is installed (the ``gpu`` extra). Runs
    are created with ``MlflowClient``, so ``start_run(log_system_metrics=True)`` does not apply;
    the monitor is started here and always stopped, also when the block raises. The samples of the
    last, unfinished interval are logged too, so a run shorter than one interval has its figures.
    A monitor that cannot start costs the run nothing but its system metrics.
    """
    monitor = _start_monitor(tracking_uri, run_id, interval) if enabled else None
    try:
        yield
    finally:
        if monitor is not None:
            with suppress(Exception):  # observing a run never fails it
                monitor.finish()


def _start_monitor(tracking_uri: str, run_id: str, interval: float) -> Any:
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # its start/stop lines at INFO, every run
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

    class Monitor(SystemMetricsMonitor):
        def finish(self) -> None:
            started = self._process is not None
            super().finish()  # stops and joins the thread, flushes what it logged
            if not started:
                return
            # The thread leaves the samples of its last interval unlogged when it is stopped
            # mid-interval; a run shorter than one interval would have none at all.
            if not any(m.metrics for m in self.monitors):
                self.collect_metrics()
            self.publish_metrics(self.aggregate_metrics())
            self.mlflow_logger.flush()

    try:
        monitor = Monitor(
            run_id,
            sampling_interval=interval,
            resume_logging=True,  # a resumed run's figures continue its steps
            tracking_uri=tracking_uri,
        )
        monitor.start()
    except Exception:  # noqa: BLE001 - no system metrics, the run goes on
        return None
    return monitor


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def fail_run(tracking_uri: str, run_id: str, exc: BaseException) -> None:
    """Record the error on the run and mark it FAILED; never raises (the original error matters)."""
    try:
        c = client(tracking_uri)
        c.set_tag(run_id, "msaflow.error", f"{type(exc).__name__}: {exc}"[:5000])
        c.log_text(run_id, "".join(traceback.format_exception(exc)), "error.txt")
        c.set_terminated(run_id, status="FAILED")
    except Exception:  # noqa: BLE001
        pass


def log_table_artifacts(
    tracking_uri: str, run_id: str, rows: list[dict[str, Any]], stem: str
) -> None:
    """A table as CSV and Markdown artifacts."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    c = client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, md_path = Path(tmp) / f"{stem}.csv", Path(tmp) / f"{stem}.md"
        frame.to_csv(csv_path, index=False)
        md_path.write_text(markdown_table(rows))
        c.log_artifact(run_id, str(csv_path))
        c.log_artifact(run_id, str(md_path))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
