"""The parent run's summary: every child's test metrics in one table, and the cross-fold means.

``summarize`` is the plain function; ``summarize_task`` its task. The summary closes the parent
run, so a flow calls it last.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import task

from msaflow.tasks import tracking as tr
from msaflow.tasks.refs import DataRef, Tracking


def cross_fold_means(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean of ``keys`` over the ``<cell>/fold<i>`` runs of each cell (empty without folds)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "/fold" in str(r.get("cell", "")):
            groups.setdefault(r["cell"].rsplit("/fold", 1)[0], []).append(r)
    out = []
    for cell, members in groups.items():
        mean = {}
        for k in keys:
            values = [
                float(m[k]) for m in members if m.get(k) is not None and not math.isnan(float(m[k]))
            ]
            mean[k] = sum(values) / len(values) if values else float("nan")
        out.append({"cell": cell, "n": len(members), **mean})
    return out


def summarize(
    rows: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    tracking: Tracking,
    parent_run_id: str,
    data_ref: DataRef,
) -> dict[str, Any]:
    """The parent run's summary table (CSV + Markdown) of every child's test metrics."""
    from msaflow.tasks.artifacts import mlflow_pointer, publish_markdown, publish_table
    from msaflow.tasks.metrics import HEADLINE

    uri = tracking.uri
    headline = [f"test/{m}" for m in HEADLINE[data_ref.data_kind]]
    table = [
        {
            "run": r["run_name"],
            "run_id": r["run_id"],
            "best_epoch": r["best_epoch"],
            **{k: r.get(k) for k in headline},
        }
        for r in rows
    ]
    table += [
        {"run": f["run_name"], "run_id": "", "best_epoch": "", "error": f["error"]}
        for f in failures
    ]
    cv = cross_fold_means(rows, headline)
    if cv:  # k-fold CV: the mean over folds (and seeds) per cell is the reported figure
        table += [
            {
                "run": f"{row['cell']} (mean of {row['n']} fold runs)",
                "run_id": "",
                "best_epoch": "",
                **{k: row[k] for k in headline},
            }
            for row in cv
        ]
        for row in cv:
            tr.log_metrics(uri, parent_run_id, {f"cv/{row['cell']}/{k}": row[k] for k in headline})
    tr.log_table_artifacts(uri, parent_run_id, table, "summary")
    experiment = tracking.experiment or tracking.experiment_id
    publish_table("summary", experiment, table, f"test metrics of every run on {data_ref.name}")
    publish_markdown(
        "results",
        experiment,
        mlflow_pointer(uri, tracking.experiment_id, parent_run_id),
        "where this flow run's results are",
    )
    tr.set_tags(
        uri,
        parent_run_id,
        {"msaflow.children": len(rows), "msaflow.failed_children": len(failures)},
    )
    tr.finish_run(uri, parent_run_id)  # failures are recorded on the children and tagged here
    return {"rows": table}


summarize_task = task(name="summarize")(summarize)
