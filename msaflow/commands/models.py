"""``msaflow models``: what the registry holds (every model file's ``SPEC``, plus entry points)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the models: variants, presets, tuned parameters and the tables they reproduce."""
    from rich.table import Table

    from msaflow.cli import out
    from msaflow.models import registry

    rows = [
        {
            "model": name,
            "variants": list(spec.variants),
            "default_variant": spec.default_variant,
            "presets": list(spec.presets),
            "search_space": list(spec.search_space),
            "tables": list(spec.tables),
        }
        for name, spec in registry().items()
    ]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title="registered models (msaflow run --model NAME)")
    for col in ("model", "variants", "presets", "search space", "tables"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            ", ".join(r["variants"]),
            ", ".join(r["presets"]),
            ", ".join(r["search_space"]) or "-",
            ", ".join(r["tables"]) or "-",
        )
    out.print(table)
