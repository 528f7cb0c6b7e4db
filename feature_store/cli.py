"""``msaflow data``: synthesize, ingest, inspect and validate feature stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Feature stores: synthesize, ingest, inspect, validate.")
_err = Console(stderr=True)
_out = Console()


def _fail(exc: Exception) -> None:
    _err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


def _summary(manifest) -> dict:
    return {"name": manifest.name, "source": manifest.source, "task": manifest.task,
            "label_kind": manifest.label_kind, "splits": manifest.splits, "modalities": manifest.modalities,
            "content_hash": manifest.content_hash}


@app.command()
def synth(
    profile: Annotated[str, typer.Option(help="mosi | mosei | iemocap | cmdc")] = "mosi",
    out: Annotated[Path, typer.Option(help="Store directory to write.")] = Path("sim-mosi"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    scale: Annotated[float, typer.Option(help="Shrink every split by this fraction (tests).")] = 1.0,
) -> None:
    """Write a simulation benchmark store (a no-op when OUT already holds the same one)."""
    from feature_store import DataError, synthesize

    try:
        manifest = synthesize(profile, out, seed=seed, scale=scale)
    except DataError as exc:
        _fail(exc)
    _out.print(json.dumps(_summary(manifest), indent=2))


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="An MMSA (aligned_50.pkl / unaligned_50.pkl) or MulT pickle.")],
    out: Annotated[Path, typer.Option(help="Store directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="mmsa | mult")] = "mmsa",
    nonfinite: Annotated[str, typer.Option(help="NaN/inf features: zero (the field's practice) | error")] = "zero",
) -> None:
    """Ingest a pickle safely (no code runs) into a Parquet store."""
    from feature_store import DataError
    from feature_store import ingest as do_ingest

    try:
        manifest = do_ingest(fmt, path, out, nonfinite=nonfinite)
    except DataError as exc:
        _fail(exc)
    _out.print(json.dumps({**_summary(manifest), "cleaning": manifest.cleaning}, indent=2))


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="Store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
) -> None:
    """Show a store's manifest."""
    from feature_store import DataError, read_manifest

    try:
        manifest = read_manifest(path)
    except DataError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({**manifest.to_dict(), "content_hash": manifest.content_hash}, indent=2))
        return
    s = _summary(manifest)
    _out.print(f"[bold]{s['name']}[/] ({s['source']}) task={s['task']} labels={s['label_kind']} "
               f"hash={s['content_hash']}")
    _out.print("splits: " + ", ".join(f"{k}={v}" for k, v in s["splits"].items()))
    _out.print("modalities: " + ", ".join(f"{m} {v['seq_len']}x{v['dim']}" for m, v in s["modalities"].items()))
    if manifest.oracle:
        _out.print(f"oracle: {json.dumps(manifest.oracle)}")


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="Store directory.")]) -> None:
    """Check checksums, shapes and labels of every split."""
    from feature_store import DataError, validate_dataset

    try:
        manifest = validate_dataset(path)
    except DataError as exc:
        _fail(exc)
    _out.print(f"ok: {manifest.name} {manifest.splits} hash={manifest.content_hash}")
