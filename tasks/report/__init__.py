"""The reproduction report, rebuilt from MLflow alone (no retraining, no Prefect, no local cache).

Inputs are what the ``reproduce`` flow leaves in MLflow: a parent run (tags
``msaflow.kind=reproduce``, ``msaflow.table``, ``msaflow.cells``, ``msaflow.baselines``,
``msaflow.seeds``, ``msaflow.runs.*``, ``dataset``, ``msaflow.dataset_source``) whose children
(tag ``mlflow.parentRunId``; tags ``cell``, ``seed``, ``model``, ``dataset``) carry ``test/*``
metrics and stepped trace metrics (``sgm/omega_t``, ``ipr/dist_t``, ...). Output: Markdown, a
self-contained HTML page (PNGs inlined as base64) and the PNGs themselves, written to a folder
and/or logged to the parent run under ``report/``.

The report never presents simulation results as results on the paper's dataset: the data statement
comes first and the paper's figures are always labelled with the paper's dataset.

The package, by job: ``collect`` reads MLflow into a ``Report``; ``render`` turns it into blocks,
Markdown and HTML; ``figures`` draws the PNGs; ``build_report`` (here) runs the three.
"""

from __future__ import annotations

from typing import Any

from msaflow.tasks.paper_results import paper_table
from msaflow.tasks.report.collect import (
    N_BOOT,
    NON_TRACE_PREFIXES,
    Report,
    ReportError,
    _child_runs,
    _curves,
    _differing_params,
    _infer_data_kind,
    _json_tag,
    _membership,
    _oracle,
    _trace_families,
    _traces,
    _windows,
    dataset_statement,
    find_reproduction,
)
from msaflow.tasks.report.figures import (
    MODALITY_ORDER,
    cell_trace_figures,
    curves_figure,
    metrics_figure,
)
from msaflow.tasks.report.render import (
    ORACLE_SUBSETS,
    Block,
    _fmt_d,
    _fmt_p,
    _interval,
    _unit,
    fmt_summary,
    fmt_value,
    identical_cells,
    oracle_blocks,
    paper_blocks,
    render_blocks,
    to_html,
    to_markdown,
)
from msaflow.tasks.stats import adjust_comparisons, cell_summaries, compare_to_baseline

# the public names, and the private ones other modules import from here (tasks.evidence, tests)
__all__ = [
    "MODALITY_ORDER",
    "NON_TRACE_PREFIXES",
    "N_BOOT",
    "ORACLE_SUBSETS",
    "Block",
    "Report",
    "ReportError",
    "_child_runs",
    "_fmt_d",
    "_fmt_p",
    "_interval",
    "_membership",
    "_unit",
    "build_report",
    "cell_trace_figures",
    "curves_figure",
    "dataset_statement",
    "find_reproduction",
    "fmt_summary",
    "fmt_value",
    "identical_cells",
    "metrics_figure",
    "oracle_blocks",
    "paper_blocks",
    "render_blocks",
    "to_html",
    "to_markdown",
]


def build_report(
    tracking_uri: str, experiment: str, parent_run_id: str | None = None, figures: bool = True
) -> Report:
    """Everything the report says, from MLflow alone."""
    from msaflow.tasks.metrics import DEFAULT_SELECTION, HEADLINE
    from msaflow.tasks.tracking import client

    c = client(tracking_uri)
    parent = find_reproduction(tracking_uri, experiment, parent_run_id)
    tags = parent.data.tags
    table = tags.get("msaflow.table", "")
    cells = _json_tag(tags, "msaflow.cells", [])
    baselines = _json_tag(tags, "msaflow.baselines", {})
    seeds = [int(s) for s in tags.get("msaflow.seeds", "").split(",") if s.strip()]

    finished: dict[tuple[str, int], Any] = {}
    failed: dict[tuple[str, int], str] = {}
    for run in sorted(_child_runs(c, parent), key=lambda r: r.info.start_time or 0):
        cell, seed = run.data.tags.get("cell"), run.data.tags.get("seed")
        if (
            cell is None
            or seed is None
            or (cells and cell not in cells)
            or (seeds and int(seed) not in seeds)
        ):
            continue
        key = (cell, int(seed))
        if run.info.status == "FINISHED" and any(k.startswith("test/") for k in run.data.metrics):
            finished[key] = run  # the newest finished run of a (cell, seed) wins
            failed.pop(key, None)
        elif key not in finished:
            failed[key] = run.data.tags.get("msaflow.error", run.info.status)
    if not finished:
        raise ReportError(
            f"reproduction {parent.info.run_id} in {experiment!r} has no finished runs yet"
        )
    cells = cells or sorted({cell for cell, _ in finished})
    seeds = seeds or sorted({seed for _, seed in finished})

    data_kind = tags.get("msaflow.task") or _infer_data_kind(finished)
    present = {
        k.removeprefix("test/")
        for run in finished.values()
        for k in run.data.metrics
        if k.startswith("test/")
    }
    metrics = [m for m in HEADLINE.get(data_kind, ()) if m in present] or sorted(present - {"loss"})
    values: dict[str, dict[int, dict[str, float]]] = {cell: {} for cell in cells}
    for (cell, seed), run in finished.items():
        values[cell][seed] = {
            m: float(run.data.metrics[f"test/{m}"])
            for m in metrics
            if f"test/{m}" in run.data.metrics
        }

    try:
        paper = paper_table(tags.get("msaflow.paper") or table)
    except KeyError:
        paper = None
    name = tags.get("dataset", next(iter(finished.values())).data.tags.get("dataset", "?"))
    source = tags.get("msaflow.dataset_source", "unknown")
    simulated, statement = dataset_statement(name, source, paper.datasets if paper else [])
    baselines = {cell: baselines.get(cell, baselines.get("*", cells[0])) for cell in cells}

    report = Report(
        experiment=experiment,
        parent_run_id=parent.info.run_id,
        table=table,
        model=tags.get("model", "?"),
        dataset=name,
        dataset_source=source,
        simulated=simulated,
        statement=statement,
        cells=cells,
        seeds=seeds,
        metrics=metrics,
        values=values,
        summaries=cell_summaries(values, metrics),
        comparisons=compare_to_baseline(values, metrics, baselines, n_boot=N_BOOT, seed=0),
        baselines=baselines,
        paper=paper,
        differing_params=_differing_params(finished),
        missing=[
            f"{cell}/seed{seed}: {failed.get((cell, seed), 'not run')}"[:300]
            for cell in cells
            for seed in seeds
            if (cell, seed) not in finished
        ],
    )
    report.p_holm = adjust_comparisons(report.comparisons, "holm")
    report.p_bh = adjust_comparisons(report.comparisons, "bh")
    report.oracle = _oracle(c, parent)
    report.curve_metric = DEFAULT_SELECTION.get(data_kind, ("valid/mae", "min"))[0]
    report.curves = _curves(c, finished, report.curve_metric)
    report.windows = _windows(finished)
    report.traces = _traces(c, finished)
    if figures:
        report.figures = {"metrics.png": metrics_figure(report)}
        if any(report.curves.values()):
            report.figures["curves.png"] = curves_figure(report)
        report.figures.update(
            cell_trace_figures(report.traces, cells, simulated, name, _trace_families(report.model))
        )
    blocks = render_blocks(report, tags)
    report.markdown = to_markdown(blocks)
    report.html = to_html(blocks, report.figures, title=f"msaflow reproduction: {table}")
    return report
