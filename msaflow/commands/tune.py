"""``msaflow tune``: an Optuna study (pruned, resumable, parallel, tracked) and its best params."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from msaflow.commands.options import TrackingUri


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def command(
    model: Annotated[
        str, typer.Option(help="Model family (`msaflow models` lists them).")
    ] = "mmafnet",
    data: Annotated[
        str | None,
        typer.Option(
            help=(
                "Feature store DIR, MMSA/MulT .pkl, raw-input manifest .csv (extracted first), or "
                "sim-<profile>. Default: sim-mosi."
            )
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per trial (default: the preset's).")
    ] = None,
    trials: Annotated[
        int,
        typer.Option(
            help=(
                "The study's TOTAL of finished (complete + pruned) trials, over all workers and "
                "restarts."
            )
        ),
    ] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds (per worker).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help=(
                "Optuna RDB storage URL (default: $OPTUNA_STORAGE or "
                "sqlite:///$MSAFLOW_HOME/optuna.db). PostgreSQL for many workers/machines."
            )
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="Study name (default: <model>-<dataset>-<metric>); the same name resumes it."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes on this machine, all on the same storage.")
    ] = 1,
    metric: Annotated[
        str,
        typer.Option(
            help=(
                "Objective: a validation metric, e.g. valid/mae (minimised) or valid/acc7 "
                "(maximised); auto = the task's default (valid/mae; valid/f1_weighted for "
                "emotion)."
            )
        ),
    ] = "auto",
    sampler: Annotated[str, typer.Option(help="tpe | random | cmaes.")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median | percentile | hyperband | none.")] = "median",
    pruner_warmup: Annotated[
        int | None,
        typer.Option(
            help="Epochs before median/percentile pruning may start (default: epochs // 5)."
        ),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            help=(
                "Search-space YAML {param: {low, high, log, type, target}} (see "
                "experiments/search_space.example.yaml)."
            )
        ),
    ] = None,
    include: Annotated[
        str | None,
        typer.Option(
            help=(
                "Also tune optional params, comma-separated: lr, modulation_epochs (mmafnet) | lr "
                "(mmcl)."
            )
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="quick (CPU, minutes) | paper | model-specific presets.")
    ] = "quick",
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "msaflow-tune",
    tracking_uri: TrackingUri = None,
    seed: Annotated[int, typer.Option(help="Sampler seed (worker i uses seed + i).")] = 0,
    eval_seeds: Annotated[
        str, typer.Option(help="Seeds for the best params' test evaluation; 'none' skips it.")
    ] = "1,2,3",
    out: Annotated[
        str | None,
        typer.Option(
            help="Where to write best.yaml (default: $MSAFLOW_HOME/studies/<study>/best.yaml)."
        ),
    ] = None,
    scale: Annotated[float, typer.Option(help="Shrink the simulated dataset (sim-* only).")] = 1.0,
    data_format: Annotated[
        str, typer.Option("--format", help="Format of a .pkl --data: mmsa | mult.")
    ] = "mmsa",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable summary to stdout.")
    ] = False,
) -> None:
    """Tune a model's search space with Optuna (mmafnet: alpha, delta, lambda1, lambda2).

    Trials are pruned on the per-epoch validation metric; the study lives in an RDB storage and \
resumes
    when re-run with the same --study; the best params go to best.yaml (for `msaflow run \
--params`) and
    are evaluated once on test with --eval-seeds.
    """
    from rich.markup import escape

    from msaflow.cli import err, handled_errors, imports_without_gc, parse_seeds
    from msaflow.cli import out as stdout
    from msaflow.prefect_server import start_prefect_early

    prefect_ready = start_prefect_early()
    # PREFECT_HOME exists: the CLI's apply_defaults creates it
    with handled_errors(), imports_without_gc() as gc_resume:
        from msaflow.flows.tune import tune
        from msaflow.settings import default_tracking_uri
        from msaflow.tasks.checks import check_tune_inputs
        from msaflow.tasks.tracking import check_tracking

        seeds = (
            []
            if eval_seeds.strip().lower() in ("none", "", "0")
            else parse_seeds(eval_seeds, "--eval-seeds")
        )
        # Everything the user supplied, before Prefect runs anything (the flow checks it again).
        check_tune_inputs(
            model=model,
            data=data,
            n_trials=trials,
            workers=workers,
            metric=metric,
            sampler=sampler,
            pruner=pruner,
            pruner_options={} if pruner_warmup is None else {"n_warmup_steps": pruner_warmup},
            space_file=space,
            include=_csv(include),
            preset=preset,
            epochs=epochs,
            storage=storage,
            scale=scale,
            data_format=data_format,
        )
        check_tracking(tracking_uri or default_tracking_uri())
        gc_resume()
        prefect_ready()
        result = tune(
            model=model,
            data=data,
            epochs=epochs,
            n_trials=trials,
            timeout=timeout,
            storage=storage,
            study=study,
            workers=workers,
            metric=metric,
            sampler=sampler,
            pruner=pruner,
            pruner_options={} if pruner_warmup is None else {"n_warmup_steps": pruner_warmup},
            space_file=space,
            include=_csv(include),
            preset=preset,
            experiment=experiment,
            tracking_uri=tracking_uri,
            seed=seed,
            eval_seeds=seeds,
            out=out,
            scale=scale,
            data_format=data_format,
        )
    evaluation = result.get("evaluation") or {}
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "study": result["study"],
                    "storage": result["storage"],
                    "metric": result["metric"],
                    "direction": result["direction"],
                    "counts": result["counts"],
                    "epochs_spent": result["epochs_spent"],
                    "best_value": result["best_value"],
                    "best_params": result["best_params"],
                    "best_path": result["best_path"],
                    "parent_run_id": result["parent_run_id"],
                    "experiment_id": result["experiment_id"],
                    "test": evaluation.get("aggregate", {}),
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    else:
        c = result["counts"]
        # Names, paths and URLs are the user's: escaped, never read as rich markup.
        stdout.print(
            f"study [bold]{escape(result['study'])}[/] ({escape(result['storage'])}): "
            f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed; "
            f"{result['epochs_spent']} epochs spent"
        )
        if result["best_value"] is None:
            err.print("[yellow]no trial completed: no best params[/]")
        else:
            stdout.print(
                f"best {escape(result['metric'])} = {result['best_value']:.4f}: "
                f"{escape(str(result['best_params']))}"
            )
            stdout.print(
                f"best params written to [bold]{escape(result['best_path'])}[/] "
                f"(use: msaflow run --model {escape(model)} --params {escape(result['best_path'])})"
            )
        for key, value in sorted(evaluation.get("aggregate", {}).items()):
            if key.endswith("_mean"):
                std = evaluation["aggregate"].get(key.removesuffix("_mean") + "_std", 0.0)
                label = key.removeprefix("best_").removesuffix("_mean").replace("_", "/", 1)
                stdout.print(f"  {escape(label)}: {value:.4f} ± {std:.4f} over seeds {seeds}")
        err.print(
            f"MLflow: parent run {result['parent_run_id']} in experiment {result['experiment_id']} "
            f"(msaflow ui, then #/experiments/{result['experiment_id']}/runs)"
        )
    if result["finished"] < trials:
        err.print(
            f"[yellow]the study has {result['finished']}/{trials} finished trials (timeout or "
            "failed workers): test evaluation skipped; re-run the same command to resume[/]"
        )
    if result["failed_workers"]:
        err.print(f"[red]worker process(es) failed: {result['failed_workers']}[/]")
    if evaluation.get("failures") or result["failed_workers"]:
        raise typer.Exit(1)
