"""``msaflow data``: synthesize, ingest, inspect and validate feature stores.

JSON goes to stdout through plain ``print(json.dumps(...))``: rich would consume markup in names
and wrap lines at the terminal width, and piped output must parse. Human-readable lines go through
rich with ``markup=False`` (or escaped values): nothing a user controls (names, paths) is markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

app = typer.Typer(
    no_args_is_help=True, help="Feature stores: synthesize, ingest, inspect, validate."
)
_err = Console(stderr=True)
_out = Console()

_FORCE_HELP = (
    "Write into a non-empty folder that is not an msaflow store, beside what is there; "
    "refuses if a file there has a store file's name. Never deletes or overwrites a file "
    "msaflow did not write."
)


def _fail(exc: Exception) -> None:
    # One line, however long: soft_wrap stops rich from folding it at the terminal width.
    message = " ".join(str(exc).splitlines())
    _err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _summary(manifest) -> dict:
    return {
        "name": manifest.name,
        "source": manifest.source,
        "task": manifest.data_kind,  # the manifest's field name, as the store writes it
        "label_kind": manifest.label_kind,
        "splits": manifest.splits,
        "modalities": manifest.modalities,
        "content_hash": manifest.content_hash,
    }


@app.command()
def synth(
    profile: Annotated[str, typer.Option(help="mosi | mosei | iemocap | cmdc")] = "mosi",
    out: Annotated[Path, typer.Option(help="Store directory to write.")] = Path("sim-mosi"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    scale: Annotated[
        float, typer.Option(help="Shrink every split by this fraction (tests).")
    ] = 1.0,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
) -> None:
    """Write a simulation benchmark store (a no-op when OUT already holds the same one)."""
    from msaflow.feature_store import DataError, synthesize

    try:
        manifest = synthesize(profile, out, seed=seed, scale=scale, force=force)
    except DataError as exc:
        _fail(exc)
    _print_json(_summary(manifest))


@app.command()
def ingest(
    path: Annotated[
        Path, typer.Argument(help="An MMSA (aligned_50.pkl / unaligned_50.pkl) or MulT pickle.")
    ],
    out: Annotated[Path, typer.Option(help="Store directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="mmsa | mult")] = "mmsa",
    nonfinite: Annotated[
        str, typer.Option(help="NaN/inf features: zero (the field's practice) | error")
    ] = "zero",
    name: Annotated[
        str | None, typer.Option(help="Dataset name in the manifest (default: from the file).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
    data_kind: Annotated[
        str,
        typer.Option(
            "--task", help="sentiment | emotion (MulT IEMOCAP, labels N x 4 x 2) | depression"
        ),
    ] = "sentiment",
) -> None:
    """Ingest a pickle safely (no code runs) into a Parquet store."""
    from msaflow.feature_store import DataError
    from msaflow.feature_store import ingest as do_ingest
    from msaflow.feature_store.schema import check_target

    try:
        check_target(out, force=force)  # refuse a user's folder before reading the pickle
        manifest = do_ingest(
            fmt, path, out, nonfinite=nonfinite, name=name, force=force, data_kind=data_kind
        )
    except DataError as exc:
        _fail(exc)
    _print_json({**_summary(manifest), "cleaning": manifest.cleaning})


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="Store directory.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole manifest as JSON.")
    ] = False,
) -> None:
    """Show a store's manifest."""
    from msaflow.feature_store import DataError, read_manifest

    try:
        manifest = read_manifest(path)
    except DataError as exc:
        _fail(exc)
    if as_json:
        _print_json({**manifest.to_dict(), "content_hash": manifest.content_hash})
        return
    s = _summary(manifest)
    _out.print(
        f"[bold]{escape(str(s['name']))}[/] ({escape(str(s['source']))}) "
        f"task={escape(str(s['task']))} labels={escape(str(s['label_kind']))} "
        f"hash={s['content_hash']}",
        highlight=False,
        soft_wrap=True,
    )
    _out.print(
        "splits: " + ", ".join(f"{k}={v}" for k, v in s["splits"].items()),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    _out.print(
        "modalities: "
        + ", ".join(f"{m} {v['seq_len']}x{v['dim']}" for m, v in s["modalities"].items()),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if manifest.oracle:
        _out.print(
            f"oracle: {json.dumps(manifest.oracle)}", markup=False, highlight=False, soft_wrap=True
        )


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="Store directory.")]) -> None:
    """Check checksums, shapes, labels, finite features and unique ids (no id in two splits)."""
    from msaflow.feature_store import DataError, validate_dataset

    try:
        manifest = validate_dataset(path)
    except DataError as exc:
        _fail(exc)
    _out.print(
        f"ok: {manifest.name} {manifest.splits} hash={manifest.content_hash}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
