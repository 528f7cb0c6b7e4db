"""``msaflow server``: the local Prefect API server that msaflow's commands reuse per
``MSAFLOW_HOME`` (``msaflow/prefect_server.py``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Whether this home's server runs, its URL, and whether a process is using it."""
    from msaflow import prefect_server as ps
    from msaflow.cli import out

    info = ps.status()
    if as_json:
        out.print_json(json.dumps(info))
    elif not info["running"]:
        why = ""
        if info.get("stale"):
            why = " (its record is stale: the next run replaces it)"
        elif info.get("foreign"):
            why = (
                f" ({ps.record_path()} is not a record msaflow wrote: left alone, so each run "
                "uses a temporary server; remove it to reuse one)"
            )
        out.print(f"no Prefect server running for {info['home']}{why}", highlight=False)
    else:
        use = "in use" if info["in_use"] else f"idle; retires after {info['idle_s']:.0f} s unused"
        out.print(
            f"Prefect server pid {info['pid']} at {info['api_url']} "
            f"({'healthy' if info['healthy'] else 'not answering'}, {use})",
            highlight=False,
        )


@app.command()
def start() -> None:
    """Start this home's server now (the first msaflow run otherwise does) and wait for it."""
    import os

    from msaflow import prefect_server as ps
    from msaflow.cli import fail, out

    if ps.mode() != "reuse":
        fail(f"{ps.MODE_ENV}={os.environ[ps.MODE_ENV]}: msaflow does not reuse a server")
    if why := ps.user_configured():
        fail(f"{why}: msaflow uses that server, not its own")
    rec = ps.connect()
    if rec is None:
        fail("could not take the server's locks (see msaflow server status)", code=1)
    try:
        ps.wait_healthy(rec, float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    except ps.ServerError as exc:
        fail(str(exc), code=1)
    out.print(f"Prefect server pid {rec.pid} at {rec.api_url}", highlight=False)


@app.command()
def stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while an msaflow process uses it.")
    ] = False,
) -> None:
    """Stop this home's server (only msaflow's own: the one its record names)."""
    from msaflow import prefect_server as ps
    from msaflow.cli import fail, out

    try:
        out.print(ps.stop(force=force), highlight=False)
    except ps.ServerError as exc:
        fail(str(exc), code=1)
