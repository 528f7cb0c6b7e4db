"""A fully cached, unchanged ``msaflow run`` re-run, against a bare ``python -c "import torch"``.

In one fresh MSAFLOW_HOME per checkout: one ``msaflow run`` at a tiny scale fills the cache, then
``--repeats`` rounds each time ``import torch`` and the same command again (every run must come back
cached), interleaved, so the ratio re-run / import torch holds on a shared machine where absolute
times do not. Each ``--mode`` is timed in every round: ``reuse`` (msaflow's local Prefect server,
the default) and ``ephemeral`` (a temporary Prefect server per process, as before). ``--baseline
DIR`` adds another checkout (e.g. the main branch) to the same rounds, in its own home.

Then a breakdown of one re-run: ``-X importtime`` (the slowest imports), a cProfile of the CLI
process (where the main thread's time goes: imports, the tracking check, the wait for Prefect, the
flow), the start-up of a temporary Prefect server on its own, and the imports alone.

    .venv/bin/python bench/rerun.py [--repeats 5] [--mode reuse,ephemeral] [--baseline ../main]
        [--no-breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MSAFLOW = [sys.executable, "-m", "msaflow.cli"]  # cwd and PYTHONPATH pick the checkout
RUN = ["run", "--variants", "none", "--seeds", "1", "--epochs", "1", "--scale", "0.1", "--json"]
# Imports worth naming when they load (or do not) on a cached re-run.
NOTABLE = (
    "torch",
    "mlflow",
    "mlflow.genai",
    "mlflow.store.tracking.sqlalchemy_store",
    "alembic",
    "prefect",
    "prefect.server.api.server",
    "sklearn",
    "scipy",
    "pandas",
    "pyarrow",
    "matplotlib",
    "optuna",
    "transformers",
    "msaflow.flows.pipeline",
)
# cProfile rows (file suffix, function) that split the main thread's time.
PHASES = (
    ("msaflow/cli.py", "main", "the command, in all (the main thread)"),
    ("prefect_server.py", "connect", "find or start msaflow's Prefect server"),
    ("flows/pipeline.py", "<module>", "import the flow (prefect, torch, mlflow, models)"),
    ("flows/pipeline.py", "check_pipeline_inputs", "check the inputs (CLI and flow)"),
    ("tasks/tracking.py", "check_tracking", "tracking store check (SQLAlchemy store, alembic)"),
    ("prefect_server.py", "ready", "wait for msaflow's Prefect server"),
    ("threading.py", "join", "thread joins (a temporary server's start; Prefect's threads)"),
    ("prefect/flows.py", "__call__", "the flow run (cache lookups, MLflow parent and links)"),
)


def env_for(home: Path, root: Path, mode: str) -> dict[str, str]:
    env = {**os.environ, "MSAFLOW_HOME": str(home), "PYTHONPATH": str(root)}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(key, None)
    env["MSAFLOW_PREFECT_SERVER"] = mode
    # A bench killed before its `server stop` leaves no server behind for long.
    env["MSAFLOW_PREFECT_SERVER_IDLE_S"] = "120"
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def all_cached(stdout: str) -> bool:
    runs = json.loads(stdout)["runs"]
    return bool(runs) and all(r["cached"] for r in runs)


def importtime(env: dict[str, str], root: Path) -> dict:
    """Cumulative import times (s) of the top-level imports and of NOTABLE, from one re-run."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "msaflow.cli", *RUN],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )
    cumulative: dict[str, float] = {}
    top: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", line)
        if not m:
            continue
        us, indent, name = int(m.group(1)), len(m.group(2)), m.group(3)
        cumulative.setdefault(name, us / 1e6)
        if indent <= 1:  # imported at top level or lazily from a function: no importer above
            top.append((name, us / 1e6))
    top.sort(key=lambda t: -t[1])
    return {
        "top_level": [(n, round(s, 2)) for n, s in top[:12]],
        "notable": {n: round(cumulative[n], 2) if n in cumulative else None for n in NOTABLE},
        "all_imports_s": round(sum(s for _, s in top), 2),
    }


def profile(env: dict[str, str], root: Path, out: Path) -> dict:
    """The main thread's time by phase (cumulative, cProfile's overhead included)."""
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "msaflow.cli", *RUN],
        env=env,
        cwd=root,
        capture_output=True,
        check=True,
    )
    stats = pstats.Stats(str(out)).stats  # {(file, line, fn): (cc, nc, tt, ct, callers)}
    total = max(ct for (_, _, _), (_, _, _, ct, _) in stats.items())
    phases = {}
    for suffix, fn, label in PHASES:
        ct = sum(v[3] for (f, _, name), v in stats.items() if f.endswith(suffix) and name == fn)
        if ct:
            phases[label] = round(ct, 2)
    mlflow = sorted(
        (
            (name, round(v[3], 2))
            for (f, _, name), v in stats.items()
            if f.endswith("tasks/tracking.py") and v[3] > 0.05 and name != "<module>"
        ),
        key=lambda t: -t[1],
    )
    return {"total_s": round(total, 2), "phases_s": phases, "tracking_calls_s": mlflow[:8]}


SERVER_START = r"""
import time
t = time.perf_counter()
from msaflow.settings import apply_defaults; apply_defaults()
from prefect.server.api.server import SubprocessASGIServer
s = SubprocessASGIServer(); s.start()
print(round(time.perf_counter() - t, 2)); s.stop()
"""
IMPORTS_ONLY = (  # what every re-run imports, with the GC paused as the CLI does
    "import gc; gc.disable(); from msaflow.settings import apply_defaults; apply_defaults(); "
    "import msaflow.flows.pipeline, mlflow.store.tracking.sqlalchemy_store; gc.freeze()"
)


def stop_server(env: dict[str, str], root: Path) -> None:
    if (root / "msaflow" / "prefect_server.py").is_file():
        subprocess.run(
            [*MSAFLOW, "server", "stop", "--force"], env=env, cwd=root, capture_output=True
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mode", default="reuse,ephemeral", help="reuse, ephemeral or both")
    ap.add_argument("--baseline", type=Path, help="another checkout, timed in the same rounds")
    ap.add_argument("--no-breakdown", action="store_true")
    args = ap.parse_args()
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]

    sides = [(f"{m}", ROOT, m) for m in modes]
    if args.baseline:
        sides.append((f"baseline {args.baseline}", args.baseline.resolve(), "ephemeral"))
    tmp = tempfile.TemporaryDirectory(prefix="bench-rerun-")
    homes = {root: Path(tmp.name) / f"home{i}" for i, root in enumerate({s[1] for s in sides})}
    result: dict = {"load_avg_start": os.getloadavg(), "first_run_s": {}}
    try:
        for label, root, mode in sides:
            if label == sides[0][0] or root != ROOT:  # one fill per home (the cache is shared)
                s, _ = timed([*MSAFLOW, *RUN], env_for(homes[root], root, mode), root)
                result["first_run_s"][label] = round(s, 2)
        torch_s: list[float] = []
        rerun_s: dict[str, list[float]] = {label: [] for label, _, _ in sides}
        for _ in range(args.repeats):
            s, _ = timed([sys.executable, "-c", "import torch"], os.environ.copy(), ROOT)
            torch_s.append(s)
            for label, root, mode in sides:
                s, out = timed([*MSAFLOW, *RUN], env_for(homes[root], root, mode), root)
                if not all_cached(out):
                    sys.exit(f"{label}: the re-run trained something: {out[:2000]}")
                rerun_s[label].append(s)
        t = statistics.median(torch_s)
        result["import_torch_s"] = {
            "median": round(t, 2),
            "min": round(min(torch_s), 2),
            "all": [round(x, 2) for x in torch_s],
        }
        result["rerun"] = {
            label: {
                "median_s": round(statistics.median(v), 2),
                "min_s": round(min(v), 2),
                "all_s": [round(x, 2) for x in v],
                "ratio_median_to_torch_median": round(statistics.median(v) / t, 2),
                # each round's re-run over the same round's import torch: robust to load drifting
                "ratio_median_per_round": round(
                    statistics.median(a / b for a, b in zip(v, torch_s, strict=True)), 2
                ),
            }
            for label, v in rerun_s.items()
        }
        if not args.no_breakdown:
            label, root, mode = sides[0]
            env = env_for(homes[root], root, mode)
            result["breakdown_of"] = label
            result["importtime"] = importtime(env, root)
            result["profile"] = profile(env, root, Path(tmp.name) / "rerun.prof")
            s, out = timed(
                [sys.executable, "-c", SERVER_START], env_for(homes[root], root, mode), root
            )
            result["temporary_prefect_server_start_s"] = float(out.strip().splitlines()[-1])
            s = min(timed([sys.executable, "-c", IMPORTS_ONLY], env, root)[0] for _ in range(3))
            result["imports_only_s"] = round(s, 2)
            result["imports_only_ratio_to_torch_median"] = round(s / t, 2)
        result["load_avg_end"] = os.getloadavg()
    finally:
        for _, root, mode in sides:
            stop_server(env_for(homes[root], root, mode), root)
        tmp.cleanup()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
