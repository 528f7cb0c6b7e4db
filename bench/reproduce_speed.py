"""Wall time of ``msaflow reproduce`` sequential (1 worker) against concurrent (N workers).

Both sides run the same reproduction (default: mmafnet-table2 x 3 seeds on sim-mosi, quick
preset) as a fresh ``msaflow reproduce`` subprocess with its own empty MSAFLOW_HOME (own MLflow
store, own Prefect result cache), so caching hides no work and start-up (imports, Prefect's
ephemeral server, the MLflow database) is counted on both sides. The simulated store is built
once beforehand and shared.

    .venv/bin/python bench/reproduce_speed.py [--table mmafnet-table2] [--seeds 3]
        [--workers 2] [--epochs N] [--scale 1.0] [--order seq-first|conc-first]
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


def run_side(store: Path, args: argparse.Namespace, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-repro-w{workers}-") as home:
        env = {**os.environ, "MSAFLOW_HOME": home, "PREFECT_HOME": f"{home}/prefect"}
        for key in (
            "MLFLOW_TRACKING_URI",
            "PREFECT_API_URL",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
            "PREFECT_LOCAL_STORAGE_PATH",
        ):
            env.pop(key, None)
        cmd = [
            sys.executable,
            "-m",
            "msaflow.cli",
            "reproduce",
            args.table,
            "--data",
            str(store),
            "--seeds",
            str(args.seeds),
            "--preset",
            args.preset,
            "--workers",
            str(workers),
            "--json",
        ]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"workers={workers} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout)
        cached = sum(r["cached"] for r in out["runs"])
        return {
            "workers": workers,
            "seconds": seconds,
            "runs": len(out["runs"]),
            "cached": cached,
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="mmafnet-table2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="the concurrent side's workers")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the preset's epochs")
    ap.add_argument("--profile", default="mosi", help="simulation profile (sim-<profile>)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--order", choices=("seq-first", "conc-first"), default="seq-first")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-repro-store-") as tmp:
        store = Path(tmp) / f"sim-{args.profile}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "msaflow.cli",
                "data",
                "synth",
                "--profile",
                args.profile,
                "--out",
                str(store),
                "--scale",
                str(args.scale),
            ],
            check=True,
            cwd=ROOT,
            env={**os.environ, "MSAFLOW_HOME": tmp},
            stdout=subprocess.DEVNULL,
        )
        sides = [1, args.workers] if args.order == "seq-first" else [args.workers, 1]
        results = {w: run_side(store, args, w) for w in sides}

    seq, conc = results[1], results[args.workers]
    print(
        f"{args.table} x {args.seeds} seeds on sim-{args.profile} (scale {args.scale:g}), "
        f"preset {args.preset}"
        f"{f', {args.epochs} epochs' if args.epochs else ''}; {os.cpu_count()} CPUs"
    )
    for r in (seq, conc):
        print(
            f"  workers={r['workers']}: {r['seconds']:.1f} s for {r['runs']} runs "
            f"({r['cached']} cached); "
            f"load average {r['load_before']:.2f} -> {r['load_after']:.2f}"
        )
    print(f"  speed-up (sequential / concurrent): {seq['seconds'] / conc['seconds']:.2f}x")


if __name__ == "__main__":
    main()
