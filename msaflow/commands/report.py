"""``msaflow report --experiment NAME``: rebuild a reproduction's report from MLflow alone;
``msaflow report --evidence docs/results.yaml``: the evidence document over several of them."""

from __future__ import annotations

from typing import Annotated

import typer

from msaflow.commands.options import ReportOut, TrackingUri


def command(
    experiment: Annotated[
        str | None,
        typer.Option(
            help="MLflow experiment holding the reproduction (e.g. reproduce-mmafnet-table2)."
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    out: ReportOut = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="The reproduction's parent run (default: the newest in the experiment)."),
    ] = None,
    log: Annotated[
        bool, typer.Option(help="Also (re)log the report to the parent run's report/ artifacts.")
    ] = True,
    evidence: Annotated[
        str | None,
        typer.Option(
            help="Build the evidence document from this spec (docs/results.yaml) instead: its "
            "sections' reproductions and studies, from MLflow. --out defaults to docs/results.md."
        ),
    ] = None,
) -> None:
    """Rebuild the report (Markdown, HTML, PNGs) of a reproduction from MLflow alone."""
    from msaflow.cli import err, fail, user_errors
    from msaflow.commands.reproduce import print_summary
    from msaflow.settings import default_tracking_uri

    if evidence is not None:
        _evidence(evidence, tracking_uri or default_tracking_uri(), out or "docs/results.md")
        return
    if experiment is None:
        fail("--experiment: expected the MLflow experiment of a reproduction (or --evidence SPEC)")
    try:
        from pathlib import Path

        from msaflow.tasks.report import build_report
        from msaflow.tasks.reproduce import default_report_path
        from msaflow.tasks.tracking import check_tracking

        uri = tracking_uri or default_tracking_uri()
        check_tracking(uri)
        report = build_report(uri, experiment, run_id)
        paths = report.write(Path(out) if out else default_report_path(experiment))
        if log:
            report.log_to_parent(uri)
    except user_errors() as exc:
        fail(str(exc).strip("'\""))
    except ValueError as exc:
        fail(str(exc))
    from rich.markup import escape

    print_summary(report)
    if report.missing:
        err.print(f"[yellow]{len(report.missing)} run(s) missing or failed; see the report[/]")
    err.print(
        f"report: [bold]{escape(str(paths['markdown']))}[/] (and {escape(str(paths['html']))})"
    )


def _evidence(spec_path: str, uri: str, out: str) -> None:
    from msaflow.cli import err, fail, user_errors

    try:
        from msaflow.tasks.evidence import build_evidence, read_spec
        from msaflow.tasks.tracking import check_tracking

        check_tracking(uri)
        spec = read_spec(spec_path)
        paths = build_evidence(uri, spec, out).write(out)
    except user_errors() as exc:
        fail(str(exc).strip("'\""))
    except ValueError as exc:
        fail(str(exc))
    err.print(f"evidence: {paths['markdown']} (and {paths['html']})")
