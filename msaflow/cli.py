"""The ``msaflow`` command line (typer). Heavy imports happen inside commands."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from msaflow.commands.options import AsJson, DataFormat, TrackingUri
from msaflow.prefect_server import ServerError
from msaflow.settings import apply_defaults

apply_defaults()

app = typer.Typer(
    help="msaflow: reproduce, ablate, tune and compare multimodal sentiment models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole (paths are greppable)
out = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets the whole table


def _mount(module: str, name: str, help_text: str) -> None:
    """A sub-application. An import error here is a bug and must show, not drop the command."""
    import importlib

    app.add_typer(importlib.import_module(module).app, name=name, help=help_text)


def _register(name: str) -> None:
    """Top-level commands that live in ``msaflow/commands/<name>.py`` as ``command``."""
    import importlib

    app.command(name)(importlib.import_module(f"msaflow.commands.{name}").command)


_mount("msaflow.commands.data", "data", "Feature stores: synthesize, ingest, inspect, validate.")
_mount("msaflow.commands.features", "features", "Extract features from raw text, audio and video.")
_mount("msaflow.commands.server", "server", "The local Prefect server msaflow reuses per home.")
for _name in ("reproduce", "report", "tune", "serve", "models"):
    _register(_name)


def fail(message: str, code: int = 2) -> None:
    """One ``error:`` line on stderr; the message (paths, names) is printed as text, never
    markup."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def parse_seeds(value: str, option: str = "--seeds") -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; anything else is a ConfigError naming ``option``."""
    from msaflow.tasks.config import ConfigError

    items = _csv(value) or []
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ConfigError(
            f"{option}: expected comma-separated integers (e.g. 1,2,3), got {value!r}"
        ) from None


def user_errors() -> tuple[type[BaseException], ...]:
    from msaflow.feature_store import DataError
    from msaflow.tasks.config import ConfigError
    from msaflow.tasks.tracking import TrackingError

    return DataError, ConfigError, TrackingError, KeyError


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What MLflow raises when the tracking store goes away during a run."""
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def tracking_lost(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"the MLflow tracking store failed during the run ({first[:300]}). Runs that finished are "
        "kept in the store; re-run the same command when it is back: finished runs come from the "
        "cache, interrupted ones resume from their checkpoints."
    )


@contextmanager
def handled_errors() -> Iterator[None]:
    """A command's known failures as one ``error:`` line: bad input or config (exit 2), the tracking
    store lost during the run (exit 1)."""
    try:
        yield
    except user_errors() as exc:
        # KeyError's str() is the repr of its message: show the message itself.
        fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    except tracking_errors() as exc:
        fail(tracking_lost(exc), code=1)
    except ServerError as exc:  # msaflow's Prefect server did not come up: not the user's input
        fail(str(exc), code=1)
    except ValueError as exc:
        fail(str(exc))


def preflight_data(data: str | None, scale: float = 1.0, data_format: str = "mmsa") -> None:
    """Fail on an unreadable --data before Prefect starts (its task logs would bury the message)."""
    from msaflow.tasks.prepare import check_data

    check_data(data, scale, data_format)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def print_rows(result: dict, title: str) -> None:
    from rich.table import Table

    from msaflow.tasks.metrics import HEADLINE

    data_kind = result["dataset"]["task"]
    cols = [f"test/{m}" for m in HEADLINE[data_kind]]
    from rich.text import Text

    name, source = result["dataset"]["name"], result["dataset"]["source"]
    table = Table(title=Text(f"{title} — dataset {name} ({source})"))  # Text: names are not markup
    table.add_column("run")
    table.add_column("best ep", justify="right")
    for c in cols:
        table.add_column(c.removeprefix("test/"), justify="right")
    for r in result["rows"]:
        table.add_row(
            Text(r["run_name"] + (" (cached)" if r.get("cached") else "")),
            str(r["best_epoch"]),
            *(f"{r.get(c, float('nan')):.4f}" for c in cols),
        )
    for f in result["failures"]:
        table.add_row(
            Text(f"{f['run_name']} FAILED", style="red"),
            "",
            Text("see below", style="red"),
            *[""] * (len(cols) - 1),
        )
    out.print(table)
    for f in result["failures"]:  # whole, wrapped: a cut message hides the cause
        out.print(Text(f"{f['run_name']} FAILED: {f['error']}", style="red"))
    if result["failures"]:
        out.print("the traceback of each is error.txt in its MLflow run (tag msaflow.error)")


def extraction_line(ex: dict) -> str:
    """``--data utterances.csv``: what extraction did in this run (plain text: paths are the
    user's)."""
    if ex["skipped"]:
        return (
            f"features: {ex['store']} is current for {ex['manifest']} (inputs unchanged, "
            "extraction skipped)"
        )
    cache = ", ".join(
        f"{m}: {c['misses']} computed / {c['hits']} cached" for m, c in ex["cache"].items()
    )
    return (
        f"features: extracted {ex['written']} utterances ({ex['failures']} skipped) from "
        f"{ex['manifest']} into {ex['store']} in {ex['seconds']} s; {cache}"
    )


def ui_hint(result: dict) -> str:
    """The line that says where to look, as rich markup (the URI is escaped)."""
    uri = result["tracking_uri"]
    return (
        "Open the MLflow UI: [bold]msaflow ui[/]"
        + (f" --tracking-uri {escape(uri)}" if not uri.startswith("sqlite:") else "")
        + f" then http://127.0.0.1:5000/#/experiments/{result['experiment_id']}/runs"
    )


@app.command()
def run(
    data: Annotated[
        str | None,
        typer.Option(
            help=(
                "Feature store DIR, MMSA/MulT .pkl, raw-input manifest .csv (extracted first), or "
                "sim-<profile>. Default: sim-mosi."
            )
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Model family (`msaflow models` lists them).")
    ] = "mmafnet",
    variants: Annotated[
        str | None, typer.Option(help="Comma-separated variants (default: all of the model's).")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "1",
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    preset: Annotated[
        str, typer.Option(help="quick (CPU, minutes) | paper | model-specific presets.")
    ] = "quick",
    params: Annotated[
        str | None,
        typer.Option(
            help="YAML of overrides {model: {...}, train: {...}} (e.g. tune's best.yaml)."
        ),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "msaflow",
    tracking_uri: TrackingUri = None,
    data_format: DataFormat = "mmsa",
    scale: Annotated[float, typer.Option(help="Shrink the simulated dataset (sim-* only).")] = 1.0,
    folds: Annotated[
        int,
        typer.Option(
            help=(
                "k-fold cross-validation split by subject (e.g. 5 for CMDC); 0 = the store's "
                "splits."
            )
        ),
    ] = 0,
    workers: Annotated[
        int,
        typer.Option(
            help="Training tasks run at once (threads; with --dask, Dask worker processes)."
        ),
    ] = 1,
    dask: Annotated[
        bool,
        typer.Option(
            "--dask", help="Run training tasks on a local Dask cluster of --workers processes."
        ),
    ] = False,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Run training tasks on an existing Dask scheduler (tcp://host:8786)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Retrain even what the cache holds (no resume from checkpoints)."
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """The main job: features -> train every variant x seed -> evaluate -> summary in MLflow.

    Re-running an unchanged command takes finished runs from the cache and links them into the
    new parent run (children tagged msaflow.cached_from); --force retrains them.
    """
    from msaflow.prefect_server import start_prefect_early

    prefect_ready = start_prefect_early()  # overlaps the server's start-up with the imports below
    with handled_errors(), imports_without_gc() as gc_resume:
        from msaflow.flows.pipeline import pipeline
        from msaflow.tasks.checks import check_pipeline_inputs
        from msaflow.tasks.config import ConfigError

        if workers < 1:
            raise ConfigError(f"--workers: expected >= 1, got {workers}")
        # Everything the user supplied, resolved once, before Prefect runs anything.
        inputs = check_pipeline_inputs(
            data=data,
            model=model,
            variants=_csv(variants),
            seeds=parse_seeds(seeds) or [1],
            preset=preset,
            epochs=epochs,
            params_file=params,
            scale=scale,
            data_format=data_format,
            folds=folds,
        )
        from msaflow.settings import default_tracking_uri
        from msaflow.tasks.tracking import check_tracking

        check_tracking(tracking_uri or default_tracking_uri())
        kwargs = dict(
            data=data,
            model=model,
            variants=_csv(variants),
            seeds=inputs["seeds"],
            preset=preset,
            experiment=experiment,
            tracking_uri=tracking_uri,
            model_overrides=inputs["model_overrides"],
            train_overrides=inputs["train_overrides"],
            scale=scale,
            data_format=data_format,
            folds=folds,
            force=force,
        )
        kind = "dask" if (dask or dask_address) else "thread"
        if kind == "dask" or workers > 1:
            from msaflow.flows.serve import task_runner_for

            pipeline = pipeline.with_options(
                task_runner=task_runner_for(kind, workers, dask_address)
            )
        gc_resume()
        prefect_ready()
        result = pipeline(**kwargs)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "parent_run_id": result["parent_run_id"],
                    "experiment_id": result["experiment_id"],
                    "tracking_uri": result["tracking_uri"],
                    "dataset": result["dataset"]["name"],
                    "runs": [
                        {
                            "run_id": r["run_id"],
                            "run_name": r["run_name"],
                            "variant": r["variant"],
                            "cell": r["cell"],
                            "seed": r["seed"],
                            "cached": r.get("cached", False),
                            "linked_run_id": r.get("linked_run_id"),
                            "test": {k: v for k, v in r.items() if k.startswith("test/")},
                        }
                        for r in result["rows"]
                    ],
                    "failures": result["failures"],
                    **(
                        {"extraction": ex}
                        if (ex := result["dataset"].get("extraction")) is not None
                        else {}
                    ),
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    else:
        print_rows(result, f"{model} ({preset})")
        if (ex := result["dataset"].get("extraction")) is not None:
            err.print(Text(extraction_line(ex)))
        err.print(ui_hint(result))
    if result["failures"]:
        raise typer.Exit(1)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: Annotated[
        str | None, typer.Option(help="Backend store (default: the msaflow store).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind (keep 127.0.0.1 unless you know why).")
    ] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI for the default store on 127.0.0.1."""
    import os
    import subprocess

    from msaflow.settings import default_artifact_root, default_tracking_uri, msaflow_home

    uri = tracking_uri or default_tracking_uri()
    msaflow_home().mkdir(parents=True, exist_ok=True)
    err.print(
        f"MLflow UI for {escape(uri)} at http://{escape(host)}:{port}/  (Ctrl-C to stop)",
        highlight=False,
    )
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        default_artifact_root(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


@contextmanager
def imports_without_gc() -> Iterator[Callable[[], None]]:
    """Python's cyclic GC paused while a command imports torch, MLflow and Prefect; the yielded
    function (or the end of the block) turns it back on.

    Each full collection walks every object of every module loaded so far, and thousands load
    (an estimate from profiles, not measured on its own: a few tenths of a second of a cached
    ``msaflow run``). Module objects live to the end anyway; the little cyclic garbage an import
    leaves is collected once the GC is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()

    def resume() -> None:
        if was_enabled:
            gc.enable()

    try:
        yield resume
    finally:
        resume()


def main() -> None:
    try:
        app()
    finally:
        # The interpreter's last collection at exit would walk the whole heap again (an estimate,
        # not measured on its own).
        gc.freeze()


if __name__ == "__main__":
    main()
