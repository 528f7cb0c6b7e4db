"""Pruned against unpruned Optuna studies with the same trials: epochs spent and best validation \
value.

Both studies use the same sampler and seed, the same number of trials, the same data and epochs;
only the pruner differs. With ``--sampler random`` (default) both studies propose the identical
sequence of param sets, so the comparison is trial for trial. No MLflow, no Prefect: only
``tasks.tuning``.

    .venv/bin/python bench/tune_pruning.py --scale 0.2 --trials 16
    .venv/bin/python bench/tune_pruning.py --scale 0.2 --trials 16 --record bench/results/tune.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msaflow.settings import apply_defaults  # noqa: E402

apply_defaults()


def run_study(name: str, pruner: str, args, data_path: str, tmp: Path) -> dict:
    import optuna

    from msaflow.feature_store import read_manifest
    from msaflow.tasks import tuning as tu

    manifest = read_manifest(data_path)
    space = tu.load_search_space(
        args.model, include=tuple(args.include.split(",")) if args.include else ()
    )
    spec = tu.StudySpec(
        study=name,
        storage=f"sqlite:///{tmp / 'optuna.db'}",
        model=args.model,
        variant=args.variant or "full",
        preset=args.preset,
        metric=args.metric,
        n_trials=args.trials,
        space=tu.space_to_dict(space),
        data_path=data_path,
        data_kind=manifest.data_kind,
        input_spec=manifest.input_spec(),
        class_names=manifest.class_names,
        epochs=args.epochs,
        sampler=args.sampler,
        pruner=pruner,
        seed=args.seed,
        train_overrides={"num_threads": args.threads},
        pruner_options={}
        if args.warmup is None or pruner == "none"
        else {"n_warmup_steps": args.warmup},
    )
    if args.variant is None:
        from msaflow.models import get_spec

        spec.variant = get_spec(args.model).default_variant
    tu.create_or_load_study(spec)
    start = time.perf_counter()
    tu.run_worker(spec, 0, log=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=spec.storage)
    counts = tu.count_states(study)
    epochs = tu.epochs_spent(study)
    return {
        "study": name,
        "pruner": pruner,
        "complete": counts["COMPLETE"],
        "pruned": counts["PRUNED"],
        "failed": counts["FAIL"],
        "epochs_spent": epochs,
        "epochs_max": args.trials * (spec.epochs or 0),
        "best": study.best_value,
        "best_trial": study.best_trial.number,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mmafnet")
    p.add_argument("--variant", default=None)
    p.add_argument("--profile", default="mosi", help="simulation profile (sim-<profile>)")
    p.add_argument(
        "--scale", type=float, default=0.2, help="shrink the simulated dataset (time budget)"
    )
    p.add_argument("--preset", default="quick")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per trial (default: the preset's)"
    )
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--sampler", default="random")
    p.add_argument("--pruner", default="median", help="the pruned study's pruner")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="epochs before pruning may start (median/percentile n_warmup_steps; default: the "
        "pruner's own, 1 when epochs > 2)",
    )
    p.add_argument("--metric", default="valid/mae")
    p.add_argument("--include", default="lr", help="optional params to tune too (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    p.add_argument("--record", default=None, help="append the Markdown result to this file")
    args = p.parse_args(argv)

    from msaflow.feature_store import synthesize
    from msaflow.models import get_spec
    from msaflow.tasks.config import resolve_run_config

    if args.epochs is None:
        args.epochs = resolve_run_config(args.model, args.variant, args.preset).train.epochs
    get_spec(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp_name:
        tmp = Path(tmp_name)
        data_path = tmp / f"sim-{args.profile}"
        synthesize(args.profile, data_path, seed=0, scale=args.scale)
        rows = []
        for name, pruner in (("unpruned", "none"), ("pruned", args.pruner)):
            print(f"== {name} ({pruner})", file=sys.stderr, flush=True)
            rows.append(run_study(name, pruner, args, str(data_path), tmp))
    base, pruned = rows
    saved = 1 - pruned["epochs_spent"] / max(base["epochs_spent"], 1)
    direction = "lower" if args.metric.endswith(("mae", "loss")) else "higher"
    cmd = "python bench/tune_pruning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"### {args.model} on sim-{args.profile} x{args.scale:g}, {args.trials} trials x "
        f"{args.epochs} epochs, {args.sampler} sampler seed {args.seed}, {args.metric} "
        f"({direction} is better)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}, torch threads per trial {args.threads}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| study | pruner | complete | pruned | failed | epochs spent | of max | best value | "
        "best trial | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['study']} | {r['pruner']} | {r['complete']} | {r['pruned']} | {r['failed']} | "
            f"{r['epochs_spent']} | {r['epochs_max']} | {r['best']:.4f} | {r['best_trial']} | "
            f"{r['seconds']:.0f} |"
        )
    lines += [
        "",
        f"Epochs saved by pruning: **{saved:.0%}**; best value {pruned['best']:.4f} pruned vs "
        f"{base['best']:.4f} unpruned (difference {pruned['best'] - base['best']:+.4f}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(args.record, "a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
