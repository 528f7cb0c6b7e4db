"""CLI options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

TrackingUri = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under $MSAFLOW_HOME)."
    ),
]
ReportOut = Annotated[
    str | None,
    typer.Option(
        help="Report Markdown path; HTML and PNGs go beside it "
        "(default: $MSAFLOW_HOME/reports/<experiment>/report.md)."
    ),
]
DataFormat = Annotated[str, typer.Option("--format", help="Format of a .pkl --data: mmsa | mult.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary to stdout.")]
