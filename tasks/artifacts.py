"""Prefect artifacts: a flow run's results where the Prefect UI shows them (its Artifacts tab), so
a scheduled run's outcome is visible without opening MLflow. Only inside a flow or task run."""

from __future__ import annotations

import math
import re
from typing import Any


def artifact_key(kind: str, experiment: str) -> str:
    """Prefect keys are lowercase letters, digits and dashes: one key per kind and experiment, so
    each run of a nightly deployment adds a version under the same key."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"msaflow-{kind}-{experiment}".lower()).strip("-")
    return slug[:100]


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def publish_table(
    kind: str, experiment: str, rows: list[dict[str, Any]], description: str
) -> str | None:
    """A table artifact (the summary of a pipeline, a reproduction or a study's best runs)."""
    if not _in_prefect_run():
        return None
    from prefect.artifacts import create_table_artifact

    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = [{c: _cell(r.get(c)) for c in cols} for r in rows]
    return str(
        create_table_artifact(
            key=artifact_key(kind, experiment), table=table, description=description
        )
    )


def publish_markdown(kind: str, experiment: str, markdown: str, description: str) -> str | None:
    """A Markdown artifact (the report, or where the results are in MLflow)."""
    if not _in_prefect_run():
        return None
    from prefect.artifacts import create_markdown_artifact

    return str(
        create_markdown_artifact(
            key=artifact_key(kind, experiment), markdown=markdown, description=description
        )
    )


def mlflow_pointer(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    return (
        f"Results are in MLflow: store `{tracking_uri}`, experiment {experiment_id}, parent run "
        f"`{parent_run_id}` (`msaflow ui`, then `#/experiments/{experiment_id}/runs/"
        f"{parent_run_id}`)."
    )
