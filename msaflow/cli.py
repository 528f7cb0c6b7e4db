"""The ``msaflow`` command line."""

from __future__ import annotations

import typer

from msaflow.settings import apply_defaults

apply_defaults()

app = typer.Typer(help="msaflow: multimodal sentiment analysis experiments.", no_args_is_help=True)


def main() -> None:
    app()
