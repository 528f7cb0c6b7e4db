"""The best model of a reproduction or a tuning study, in the MLflow Model Registry.

Name: ``msaflow-<experiment>-<model>`` (``registered_name``; characters MLflow refuses, ``/`` and
``:``, and spaces become ``-``), one registered model per experiment and model family, so a
comparison table registers one per family. Alias ``best`` points at the version of the latest
reproduction's or study's best run: ``mlflow.pyfunc.load_model("models:/<name>@best")`` serves it
(``tasks.serving``).

Best is chosen on validation only: each run's own selection metric (``train.select_metric`` and
``select_mode``, the metric that chose its best epoch) at its best epoch, or the study's metric for
a study; the test split is read once, for reporting, and never chooses. Ties go to the first run
name. Registering is idempotent: the run already holds a version of that name, which is reused, so
a re-run or resumed flow adds no version; the alias moves only when the best run changed.

A registry that fails (an old server, a permissions error) never loses a result: the flow logs a
warning and returns without a registration.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from msaflow.tasks import tracking as tr

ALIAS = "best"
ARTIFACT_PATH = "model"  # the logged model's name in its run (tasks.serving.ARTIFACT_PATH)
_REFUSED = re.compile(r"[/:\s]+")

_log = logging.getLogger("msaflow.registry")


def registered_name(experiment: str, model: str) -> str:
    """``msaflow-<experiment>-<model>``, with what MLflow refuses in a name replaced by ``-``."""
    return _REFUSED.sub("-", f"msaflow-{experiment}-{model}")


def _warn(message: str) -> None:
    """A warning in the flow run's log (the Prefect UI) when there is one, else in Python's."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            get_run_logger().warning(message)
            return
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a dependency
        pass
    _log.warning(message)


def selection_of(tracking_uri: str, run_id: str) -> tuple[str, str]:
    """The run's selection metric and mode (``train.select_metric``, ``train.select_mode``)."""
    from msaflow.tasks.metrics import selection_mode

    params = tr.client(tracking_uri).get_run(run_id).data.params
    metric = params.get("train.select_metric", "valid/mae")
    return metric, params.get("train.select_mode") or selection_mode(metric)


def pick_best(
    rows: Sequence[dict[str, Any]], metric: str, mode: str
) -> tuple[dict[str, Any], float] | None:
    """The row with the best finite ``metric`` (``min`` or ``max``) and its value; None without
    one. ``metric`` must be a validation metric: test never chooses."""
    if not metric.startswith("valid/"):
        raise ValueError(f"a model is chosen on a validation metric (valid/...), not {metric!r}")
    scored = [
        (float(r[metric]), str(r.get("run_name", "")), i)
        for i, r in enumerate(rows)
        if isinstance(r.get(metric), int | float) and math.isfinite(float(r[metric]))
    ]
    if not scored:
        return None
    key = (lambda s: (s[0], s[1])) if mode == "min" else (lambda s: (-s[0], s[1]))
    value, _, index = min(scored, key=key)
    return rows[index], value


def _logged_model_id(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The newest logged model named ``model`` of the run (an evaluate retried logs another)."""
    found = tr.client(tracking_uri).search_logged_models(
        [experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{ARTIFACT_PATH}'",
    )
    newest = max(found, key=lambda m: m.creation_timestamp, default=None)
    return newest.model_id if newest is not None else None


def register_run(
    tracking_uri: str,
    name: str,
    run_id: str,
    tags: dict[str, Any] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """Register run ``run_id``'s logged model as ``name`` (reusing the version the run already
    has) and point alias ``best`` at it. Returns ``{"name", "version" (an int, as MLflow's),
    "run_id", "model_uri", "created", "alias_moved"}``. Raises what MLflow raises."""
    from mlflow.exceptions import MlflowException

    c = tr.client(tracking_uri)
    run = c.get_run(run_id)
    model_id = _logged_model_id(tracking_uri, run.info.experiment_id, run_id)
    if model_id is None:
        raise LookupError(f"run {run_id} has no logged model {ARTIFACT_PATH!r} to register")

    def get_or_create() -> None:
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, description=description or None)

    tr.idempotent(get_or_create)
    existing = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same = [v for v in existing if getattr(v, "model_id", None) in (None, model_id)]
    created = not same
    if same:
        version = max(int(v.version) for v in same)
    else:
        version = int(
            c.create_model_version(
                name,
                source=f"models:/{model_id}",
                run_id=run_id,
                tags={k: str(v)[:5000] for k, v in (tags or {}).items()},
                model_id=model_id,
            ).version
        )
    current = c.get_registered_model(name).aliases.get(ALIAS)
    moved = str(current) != str(version)
    if moved:
        c.set_registered_model_alias(name, ALIAS, str(version))
    return {
        "name": name,
        "version": version,
        "run_id": run_id,
        "model_uri": f"models:/{name}@{ALIAS}",
        "created": created,
        "alias_moved": moved,
    }


def register_best(
    tracking_uri: str,
    experiment: str,
    rows: Sequence[dict[str, Any]],
    *,
    kind: str,
    parent_run_id: str,
    metric: str | None = None,
    mode: str | None = None,
    extra_tags: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Register the best run of ``rows`` per model family (see the module docstring).

    ``metric``/``mode`` (a study's) rank every row; without them each row's own selection metric
    does (read from its run). A family whose registration fails is left out with a warning.
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(str(row.get("model", "")), []).append(row)
    done = []
    for model, members in by_model.items():
        name = registered_name(experiment, model)
        try:
            if metric is None:
                sel_metric, sel_mode = selection_of(tracking_uri, members[0]["run_id"])
            else:
                sel_metric, sel_mode = metric, mode or "min"
            picked = pick_best(members, sel_metric, sel_mode)
            if picked is None:
                _warn(
                    f"model registry: no run of {model} has a finite {sel_metric}; none is {ALIAS}"
                )
                continue
            row, value = picked
            tags = {
                "msaflow.kind": kind,
                "msaflow.parent_run_id": parent_run_id,
                "msaflow.select_metric": sel_metric,
                "msaflow.select_mode": sel_mode,
                "msaflow.select_value": value,
                "run_name": row.get("run_name", ""),
                "model": model,
                "cell": row.get("cell", ""),
                "seed": row.get("seed", ""),
                **(extra_tags or {}),
            }
            done.append(
                {
                    **register_run(
                        tracking_uri,
                        name,
                        row["run_id"],
                        tags,
                        description=f"The best {model} run of experiment {experiment!r} "
                        f"({kind}), chosen on validation; alias @{ALIAS}.",
                    ),
                    "metric": sel_metric,
                    "value": value,
                }
            )
        except Exception as exc:  # noqa: BLE001 - the results stand without a registration
            _warn(f"model registry: could not register {name!r}: {type(exc).__name__}: {exc}")
    if done:  # where the parent's best went, for the UI
        try:
            tr.set_tags(
                tracking_uri,
                parent_run_id,
                {f"msaflow.registered.{d['name']}": f"v{d['version']} @{ALIAS}" for d in done},
            )
        except Exception as exc:  # noqa: BLE001
            _warn(f"model registry: could not tag the parent run: {exc}")
    return done


# Never cached: the alias must follow the registry as it is now, not as a cached result recalls it.
register_best_task = task(name="register-best", cache_policy=NO_CACHE, persist_result=False)(
    register_best
)
