"""``msaflow reproduce TABLE``: a paper's table over several seeds, with statistics and a report."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from msaflow.commands.options import AsJson, DataFormat, ReportOut, TrackingUri


def print_summary(report: Any) -> None:
    """Mean ± std per cell for the report's metrics, after the data statement."""
    from rich.table import Table
    from rich.text import Text

    from msaflow.cli import out
    from msaflow.tasks.report import fmt_summary

    # Text, not markup: a dataset or cell name is the user's and may hold brackets.
    out.print(Text(report.statement.replace("**", "")), highlight=False)
    table = Table(
        title=Text(
            f"{report.table} on {report.dataset}: mean ± std over seeds {report.seeds} "
            "(CIs in the report)"
        )
    )
    table.add_column("cell")
    for m in report.metrics:
        table.add_column(m, justify="right")
    for cell in report.cells:
        table.add_row(
            Text(cell),
            *(fmt_summary(m, report.summaries[cell][m], ci=False) for m in report.metrics),
        )
    out.print(table)


def command(
    table: Annotated[
        str, typer.Argument(help="A table (`msaflow models` lists each model's tables).")
    ],
    data: Annotated[
        str | None,
        typer.Option(
            help=(
                "Feature store DIR, MMSA/MulT .pkl, raw-input manifest .csv (extracted first), or "
                "sim-<profile>. Default: sim-mosi."
            )
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option(help="Number of seeds (1..N); the statistics need at least 2.")
    ] = 5,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    preset: Annotated[
        str, typer.Option(help="quick (CPU, minutes) | paper | model-specific presets.")
    ] = "quick",
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default: reproduce-<TABLE>).")
    ] = None,
    tracking_uri: TrackingUri = None,
    out: ReportOut = None,
    workers: Annotated[
        int | None, typer.Option(help="Runs at a time (default: min(2, CPU count)).")
    ] = None,
    scale: Annotated[float, typer.Option(help="Shrink the simulated dataset (sim-* only).")] = 1.0,
    data_format: DataFormat = "mmsa",
    params: Annotated[
        str | None,
        typer.Option(
            help="YAML of overrides {model: {...}, train: {...}} for every cell, as `run --params` "
            "reads (e.g. tune's best.yaml); a cell's own settings win."
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Reproduce a paper's table: each cell x seed a child run of one MLflow parent; a report.

    Re-running the same command resumes: finished runs are not redone (more --seeds adds runs).
    """
    from rich.markup import escape

    from msaflow.cli import err, handled_errors, imports_without_gc, ui_hint
    from msaflow.prefect_server import start_prefect_early

    prefect_ready = start_prefect_early()
    # PREFECT_HOME exists: the CLI's apply_defaults creates it
    with handled_errors(), imports_without_gc() as gc_resume:
        from msaflow.flows.reproduce import reproduce
        from msaflow.tasks.checks import get_table

        get_table(table)  # an unknown table is a usage error, before anything starts
        # reproduce() checks the preset, --params, --data, seeds and the tracking store before its
        # flow starts.
        gc_resume()
        prefect_ready()
        result = reproduce(
            table,
            data=data,
            seeds=seeds,
            epochs=epochs,
            preset=preset,
            experiment=experiment,
            tracking_uri=tracking_uri,
            max_workers=workers,
            out=out,
            scale=scale,
            data_format=data_format,
            params_file=params,
        )
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "table": table,
                    "parent_run_id": result["parent_run_id"],
                    "experiment": result["experiment"],
                    "experiment_id": result["experiment_id"],
                    "tracking_uri": result["tracking_uri"],
                    "dataset": result["dataset"]["name"],
                    "dataset_source": result["dataset"]["source"],
                    "resumed": result["resumed"],
                    "report": result["report"],
                    "runs": [
                        {
                            "run_id": r["run_id"],
                            "cell": r["cell"],
                            "seed": r["seed"],
                            "cached": r.get("cached", False),
                        }
                        for r in result["rows"]
                    ],
                    "failures": result["failures"],
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    else:
        from msaflow.tasks.report import build_report

        if result["report"]:
            print_summary(
                build_report(
                    result["tracking_uri"],
                    result["experiment"],
                    result["parent_run_id"],
                    figures=False,
                )
            )
            err.print(
                f"report: [bold]{escape(result['report']['markdown'])}[/] "
                f"(and {escape(result['report']['html'])})"
            )
        cached = sum(bool(r.get("cached")) for r in result["rows"])
        err.print(
            f"{len(result['rows'])} runs finished ({cached} from cache), "
            f"{len(result['failures'])} failed"
        )
        for f in result["failures"]:
            err.print(f"[red]{escape(f['run_name'])} FAILED[/]: {escape(f['error'])}")
        err.print(ui_hint(result))
    if result["failures"]:
        err.print(
            "[yellow]re-run the same command to retry the failed runs; finished ones are kept[/]"
        )
        raise typer.Exit(1)
