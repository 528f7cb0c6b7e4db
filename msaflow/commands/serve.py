"""``msaflow serve``: run a flow on a schedule, set up the ``gpu`` work pool, or register
``prefect.yaml``."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer


def command(
    flow: Annotated[
        str, typer.Option(help="Flow to serve: pipeline | reproduce | tune.")
    ] = "pipeline",
    cron: Annotated[
        str | None,
        typer.Option(help='Cron schedule, e.g. "0 3 * * *" (UTC). None: run on demand only.'),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Deployment name (default: <flow>-served).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help=(
                "Flow parameter key=value (YAML value; repeatable), e.g. --param "
                "variants=[none,full]."
            ),
        ),
    ] = None,
    dask_workers: Annotated[
        int | None,
        typer.Option(help="pipeline only: train on a local Dask cluster of N processes."),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(help="pipeline only: train on the Dask scheduler at tcp://HOST:8786."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Most runs this server executes at once.")
    ] = None,
    setup_pool: Annotated[
        bool,
        typer.Option(
            "--setup-pool",
            help="Create/update the process work pool (concurrency = GPU count, min 1) and the "
            "'gpu' tag concurrency limit (same value), and exit.",
        ),
    ] = False,
    pool: Annotated[str, typer.Option(help="Work pool for --setup-pool and --deploy.")] = "gpu",
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Override the pool's and the gpu tag's concurrency (default: GPU count, min 1)."
        ),
    ] = None,
    deploy: Annotated[
        bool,
        typer.Option(
            "--deploy", help="Register prefect.yaml's deployments whose flow exists here, and exit."
        ),
    ] = False,
) -> None:
    """Serve a flow as a deployment (optionally on a cron), or set up the work pool / deployments \
for workers.

    Needs a Prefect server for anything beyond this process: set PREFECT_API_URL (e.g. \
http://127.0.0.1:4200/api).
    """
    from rich.markup import escape
    from rich.text import Text

    from msaflow.cli import err, fail
    from msaflow.flows.serve import (
        ServeError,
        deploy_from_yaml,
        parse_params,
        serve_flow,
        task_runner_for,
    )
    from msaflow.flows.serve import setup_pool as make_pool

    needs_server = setup_pool or deploy
    if needs_server and not os.environ.get("PREFECT_API_URL"):
        fail(
            "--setup-pool/--deploy need a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    try:
        if setup_pool:
            info = make_pool(pool, concurrency)
            err.print(
                f"work pool [bold]{escape(str(info['name']))}[/] ({escape(str(info['type']))}) "
                f"{'created' if info['created'] else 'updated'}: concurrency "
                f"{info['concurrency_limit']}; tag [bold]{escape(str(info['tag']))}[/]: "
                f"{info['tag_concurrency_limit']} training task(s) at once"
            )
            typer.echo(json.dumps(info))
        if deploy:
            for row in deploy_from_yaml(work_pool=pool):
                err.print(
                    Text(
                        f"{row['name']}: {row['status']}"
                        + (f" ({row['reason']})" if "reason" in row else "")
                    )
                )
        if needs_server:
            return
        if (dask_workers or dask_address) and flow != "pipeline":
            fail("--dask-workers/--dask-address apply to the pipeline flow only")
        runner = (
            task_runner_for("auto", dask_workers, dask_address)
            if (dask_workers or dask_address)
            else None
        )
        err.print(
            f"serving [bold]{escape(flow)}[/]"
            + (f" on cron {escape(repr(cron))}" if cron else " (on demand)")
            + " — Ctrl-C to stop"
        )
        serve_flow(
            flow,
            deployment=name,
            cron=cron,
            parameters=parse_params(param),
            task_runner=runner,
            limit=limit,
        )
    except ServeError as exc:
        fail(str(exc))
