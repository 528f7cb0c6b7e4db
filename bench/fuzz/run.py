"""The long fuzz campaign (issue 20): ``python bench/fuzz/run.py --reader NAME --inputs N --seed \
S``.

Runs in forked workers with an address-space limit (the hang/memory oracle), ``--batch`` inputs per
worker. Prints per reader: inputs tried, unique findings, how many the corpus marks fixed, corpus
size, wall time and the command to repeat it. ``--save`` shrinks each new finding and writes it to
``tests/fuzz/corpus/<reader>/`` (then replayed by ``tests/fuzz/test_corpus.py``); ``--cli N`` also
sends every N-th input through the ``msaflow`` CLI. ``--json PATH`` appends the figures as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fuzz"))

import fuzz_harness as fh  # noqa: E402
from fuzz_targets import ORDER, TARGETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reader", action="append", choices=[*ORDER, "all"], required=True)
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0, help="per-input time limit (s)")
    ap.add_argument("--batch", type=int, default=2000, help="inputs per forked worker")
    ap.add_argument(
        "--in-process", action="store_true", help="no worker isolation (faster, no RLIMIT_AS)"
    )
    ap.add_argument("--save", action="store_true", help="shrink new findings into the corpus")
    ap.add_argument("--cli", type=int, default=0, help="also run every N-th input through the CLI")
    ap.add_argument("--json", type=Path, help="append the figures as JSON lines here")
    args = ap.parse_args(argv)
    readers = list(ORDER) if "all" in args.reader else args.reader
    open_total = 0
    for reader in readers:
        target = TARGETS[reader]
        t0 = time.perf_counter()

        def progress(c, i, t0=t0):
            print(
                f"  {c.reader}: {i}/{args.inputs} inputs, {len(c.findings)} unique findings, "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )

        camp = fh.run_campaign(
            reader,
            args.inputs,
            args.seed,
            isolate=not args.in_process,
            timeout=args.timeout,
            batch=args.batch,
            progress=progress,
        )
        cli_findings: dict[str, dict] = {}
        if args.cli and target.cli:
            seeds = target.seeds()
            with tempfile.TemporaryDirectory() as tmp:
                sb = fh.Sandbox(Path(tmp) / "cli")
                for i in range(0, args.inputs, args.cli):
                    r = fh.check_cli(target, fh.gen_case(target, seeds, args.seed, i), sb)
                    camp.counts[r.status] = camp.counts.get(r.status, 0) + 1
                    if r.status == "finding":
                        cli_findings.setdefault(
                            r.signature, {"index": i, "detail": r.detail, "count": 0}
                        )["count"] += 1
            camp.findings.update(cli_findings)
        known = {
            json.loads((d / "finding.json").read_text())["signature"]: json.loads(
                (d / "finding.json").read_text()
            )
            for d in fh.corpus_entries()
            if d.parent.name == reader
        }
        if args.save:
            seeds = target.seeds()
            with tempfile.TemporaryDirectory() as tmp:
                sb = fh.Sandbox(Path(tmp) / "sb")
                for sig, f in camp.findings.items():
                    if sig in known or sig.startswith("cli-"):
                        continue
                    case = fh.gen_case(target, seeds, args.seed, f["index"])
                    small = fh.shrink(target, case, sig, sb, args.timeout)
                    fh.save_finding(
                        reader,
                        small,
                        sig,
                        f["detail"],
                        seed=args.seed,
                        index=f["index"],
                        status="open",
                        note=f"found by seed {args.seed} input {f['index']}",
                    )
                    print(f"  saved {reader}/{fh.finding_id(sig)}: {sig}", flush=True)
        fixed = sum(1 for s in camp.findings if known.get(s, {}).get("status") == "fixed")
        reported = sum(1 for s in camp.findings if known.get(s, {}).get("status") == "reported")
        open_total += len(camp.findings) - fixed
        size = (
            sum(p.stat().st_size for p in (fh.CORPUS / reader).rglob("*") if p.is_file())
            if (fh.CORPUS / reader).exists()
            else 0
        )
        n_entries = len([d for d in fh.corpus_entries() if d.parent.name == reader])
        cmd = (
            f"python bench/fuzz/run.py --reader {reader} --inputs {args.inputs} --seed {args.seed}"
            + (f" --cli {args.cli}" if args.cli else "")
            + (" --in-process" if args.in_process else "")
        )
        figures = {
            "reader": reader,
            "inputs": camp.inputs,
            "outcomes": camp.counts,
            "unique_findings": len(camp.findings),
            "fixed": fixed,
            "reported": reported,
            "corpus_entries": n_entries,
            "corpus_bytes": size,
            "wall_s": round(camp.wall_s, 1),
            "command": cmd,
            "findings": {s: {k: v for k, v in f.items()} for s, f in camp.findings.items()},
        }
        print(
            f"{reader}: inputs {camp.inputs} ({camp.counts}), unique findings "
            f"{len(camp.findings)}, fixed {fixed}, reported {reported}, corpus {n_entries} entries "
            f"/ {size} B, wall {camp.wall_s:.1f} s\n  repeat: {cmd}",
            flush=True,
        )
        for sig, f in camp.findings.items():
            print(
                f"  finding {sig} x{f['count']} (first: input {f['index']}): {f['detail'][:160]}",
                flush=True,
            )
        if args.json:
            with open(args.json, "a") as fh_:
                fh_.write(json.dumps(figures) + "\n")
    return 1 if open_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
