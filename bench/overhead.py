"""Overhead of orchestration + tracking: `msaflow run` against the training engine called directly.

Both sides do the same work (same store, variants, seeds, preset, epochs) in a fresh subprocess
each, so imports and start-up are counted on both sides; the pipeline side additionally pays for
Prefect (msaflow's reused local server by default: the first repeat starts it, later ones reuse it;
``--prefect-server ephemeral`` for a temporary server per process), MLflow logging (metrics, traces,
plots, the model) and test evaluation. The server is stopped at the end.

    .venv/bin/python bench/overhead.py [--variants none,sgm,sgm_ipr,full] [--epochs N] [--scale F]
        [--prefect-server reuse|ephemeral]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIRECT = (
    r"""
import sys, time
from msaflow.settings import apply_defaults; apply_defaults()
from msaflow.feature_store import load_dataset
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.train import train_model
store, variants, epochs = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
manifest, splits = load_dataset(store)
for v in variants:
    cfg = resolve_run_config("mmafnet", v, "quick", """
    r"""train_overrides={"epochs": epochs} if epochs else {},
                             input_spec=manifest.input_spec())
    train_model(cfg, splits, data_kind=manifest.data_kind)
"""
)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="none,sgm,sgm_ipr,full")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the quick preset's epochs")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--prefect-server", choices=("reuse", "ephemeral"), default="reuse")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MSAFLOW_HOME": home}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_URL", None)
        env["MSAFLOW_PREFECT_SERVER"] = args.prefect_server
        env["MSAFLOW_PREFECT_SERVER_IDLE_S"] = "120"  # a killed bench leaves no server for long
        py = sys.executable
        try:
            d, p = measure(args, env, Path(home))
        finally:  # the home goes away: so does its server
            subprocess.run(
                [py, "-m", "msaflow.cli", "server", "stop", "--force"],
                env=env,
                cwd=ROOT,
                capture_output=True,
            )
        print(
            json.dumps(
                {
                    "variants": args.variants,
                    "epochs": args.epochs or "quick",
                    "scale": args.scale,
                    "prefect_server": args.prefect_server,
                    "direct_s": round(d, 2),
                    "msaflow_run_s": round(p, 2),
                    "overhead_pct": round(100 * (p - d) / d, 1),
                },
                indent=2,
            )
        )


def measure(args: argparse.Namespace, env: dict[str, str], home: Path) -> tuple[float, float]:
    """Best direct and best ``msaflow run`` wall time over the repeats."""
    py = sys.executable
    store = home / "store"
    subprocess.run(
        [
            py,
            "-m",
            "msaflow.cli",
            "data",
            "synth",
            "--profile",
            "mosi",
            "--out",
            str(store),
            "--scale",
            str(args.scale),
        ],
        check=True,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    direct, piped = [], []
    for r in range(args.repeats):
        direct.append(timed([py, "-c", DIRECT, str(store), args.variants, str(args.epochs)], env))
        run = [
            py,
            "-m",
            "msaflow.cli",
            "run",
            "--data",
            str(store),
            "--variants",
            args.variants,
            "--experiment",
            f"overhead-{r}",
            "--json",
        ]
        if args.epochs:
            run += ["--epochs", str(args.epochs)]
        piped.append(timed(run, env))
    return min(direct), min(piped)


if __name__ == "__main__":
    main()
