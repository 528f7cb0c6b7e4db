"""The ``reproduce`` flow's steps: its resumable parent run, the threads per run, and the report.

A reproduction's parent is keyed on what defines it (table, data, preset, epochs, cells, code
version; not the seeds), so re-running it -- after an interruption, a failure, or with more seeds --
reopens the same parent (``open_or_resume_parent``). The report is built from MLflow alone
(``tasks.report``), logged to the parent and written to a file (``write_report``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from msaflow.models.spec import Cell, TableSpec
from msaflow.settings import msaflow_home
from msaflow.tasks import tracking as tr
from msaflow.tasks.policy import code_version, retry_transient
from msaflow.tasks.refs import DataRef, Tracking
from msaflow.tasks.run import open_parent_run


def default_report_path(experiment: str) -> Path:
    """``$MSAFLOW_HOME/reports/<experiment>/report.md``."""
    return msaflow_home() / "reports" / experiment / "report.md"


def membership_tags(run_ids: list[str], size: int = 4800) -> dict[str, str]:
    """Run ids as tags (``msaflow.runs.0`` ..., each under MLflow's 5000-character tag limit)."""
    text = ",".join(run_ids)
    chunks = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    return {
        "msaflow.runs.n": str(len(chunks)),
        **{f"msaflow.runs.{i}": c for i, c in enumerate(chunks)},
    }


def reproduction_key(
    table: str,
    spec: TableSpec,
    cells: list[Cell],
    data_ref: DataRef,
    preset: str,
    epochs: int,
    train_overrides: dict[str, Any],
    model_overrides: dict[str, Any] | None = None,
) -> str:
    """What defines a reproduction (not its seeds): equal keys reopen one parent run."""
    blob = json.dumps(
        {
            "table": table,
            "model": spec.model,
            "data": data_ref.manifest_hash,
            "preset": preset,
            "epochs": epochs,
            "train": train_overrides,
            # Only when given: reproductions keyed before --params existed keep their key.
            **({"model_overrides": model_overrides} if model_overrides else {}),
            "code": code_version(),
            # a cell's own model only when it has one: older reproductions keep their key
            "cells": [
                [c.name, c.variant, c.overrides, *([c.model] if c.model else [])] for c in cells
            ],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def open_or_resume_parent(
    tracking: Tracking,
    key: str,
    data_ref: DataRef,
    spec: TableSpec,
    cells: list[Cell],
    seeds: list[int],
    preset: str,
) -> tuple[str, bool]:
    """The parent run with reproduction key ``key``, reopened, or a new one; and whether resumed."""
    uri = tracking.uri
    found = tr.client(uri).search_runs(
        [tracking.experiment_id],
        filter_string=(
            f"tags.`msaflow.kind` = 'reproduce' and tags.`msaflow.reproduce_key` = '{key}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        tr.client(uri).update_run(run_id, status="RUNNING")
        return run_id, True
    return open_parent_run(tracking, data_ref, spec.model, cells, seeds, preset, "reproduce"), False


@contextmanager
def thread_share(workers: int) -> Iterator[None]:
    """Concurrent runs share the cores: each gets its share of torch's intra-op threads, restored
    after."""
    import torch

    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_report(
    tracking: Tracking, parent_run_id: str, out: str | None
) -> tuple[dict[str, str], str | None]:
    """The reproduction's report, from MLflow: logged to the parent and written to ``out``.

    Returns the written paths (``{"markdown": ..., "html": ...}``) and no error, or no paths and
    the reason when there is nothing to report (every run failed: the failures say why).
    """
    from msaflow.tasks.artifacts import publish_markdown
    from msaflow.tasks.report import ReportError, build_report

    try:
        report = build_report(tracking.uri, tracking.experiment, parent_run_id)
        report.log_to_parent(tracking.uri)
        paths = report.write(Path(out) if out else default_report_path(tracking.experiment))
        publish_markdown(
            "report", tracking.experiment, report.markdown, "the reproduction's report"
        )
    except ReportError as exc:
        return {}, str(exc)
    return {k: str(v) for k, v in paths.items()}, None


# Always rebuilt from MLflow (never cached): the runs it reads may have changed since.
report_task = task(
    name="report",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_condition_fn=retry_transient,
)(write_report)
