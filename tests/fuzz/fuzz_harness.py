"""The oracle, the campaign runner, the shrinker and the corpus.

Oracle, per input: the reader's public entry point either succeeds or raises the project's own error
type (``DataError`` naming a file / ``ConfigError``). A finding is anything else: another exception,
a hang past ``timeout`` (SIGALRM in process; a killed worker when C code ignores it), peak memory
growing past ``mem_budget`` (and ``RLIMIT_AS`` in isolated workers), a change to the sentinel
directory beside the input (a file outside the target touched), or the marker file that the
payloads create (``$FUZZ_MARKER``) appearing. Via the CLI: exit 0 or 2, and for 2 one stderr line
naming the file, no traceback.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz_targets import TARGETS, Case, Target

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
PROJECT_DIRS = ("feature_store", "tasks", "flows", "models", "msaflow")
MEM_BUDGET = 512 << 20  # peak RSS growth one input may cause (inputs are a few KB)
AS_HEADROOM = 3 << 30  # address space an isolated worker may add to what its imports mapped


class Hang(BaseException):  # BaseException: a reader's ``except Exception`` cannot swallow it
    pass


@dataclass
class Result:
    status: str  # ok | clean | finding
    signature: str = ""
    detail: str = ""


def _on_alarm(signum, frame):
    raise Hang()


def write_case(case: Case, directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name, data in case.items():
        (directory / name).write_bytes(data)


def read_case(directory: Path) -> Case:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != "finding.json"
    }


def gen_case(target: Target, seeds: list[Case], seed: int, i: int) -> Case:
    """Input ``i`` of campaign ``seed``: the seeds themselves first, then one mutation chain
    each."""
    if i < len(seeds):
        return seeds[i]
    rng = random.Random(f"{target.name}:{seed}:{i}")
    base = rng.choice(seeds)
    try:
        return target.mutate(base, rng, seeds)
    except Exception:  # noqa: BLE001 - a mutation that does not apply: fall back to bytes (still seeded)
        import fuzz_engine as fe

        name = rng.choice(sorted(base))
        return {**base, name: fe.mutate_bytes(base[name], rng)}


def _where(exc: BaseException) -> str:
    """file:function of the innermost frame in project code (stable across line edits)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [
        f
        for f in frames
        if any(f"/{d}/" in f.filename for d in PROJECT_DIRS) and "/tests/" not in f.filename
    ]
    f = (ours or frames or [None])[-1]
    if f is None:
        return "?"
    rel = f.filename.split("/site-packages/")[-1]
    for d in PROJECT_DIRS:
        if f"/{d}/" in f.filename:
            rel = d + "/" + f.filename.split(f"/{d}/", 1)[1]
    return f"{rel}:{f.name}"


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(directory))] = (st.st_size, st.st_mtime_ns)
    return out


class Sandbox:
    """A scratch root: ``case/`` (the input), ``work/`` (the reader's outputs), ``sentinel/`` (must
    never change) and the marker path the payloads would create."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.case_dir, self.work, self.sentinel = root / "case", root / "work", root / "sentinel"
        self.marker = root / "MARKER"
        self.sentinel.mkdir(exist_ok=True)
        (self.sentinel / "thesis.txt").write_text("do not touch\n")
        (self.sentinel / "sub").mkdir(exist_ok=True)
        (self.sentinel / "sub" / "data.pkl").write_bytes(b"\x80\x04N.")
        self.snap = _snapshot(self.sentinel)
        os.environ["FUZZ_MARKER"] = str(self.marker)

    def after(self) -> Result | None:
        if self.marker.exists():
            self.marker.unlink()
            return Result("finding", "code-exec", "the payload's marker file was created")
        extra = sorted(set(os.listdir(self.root)) - {"case", "work", "sentinel"})
        if extra or _snapshot(self.sentinel) != self.snap:
            return Result(
                "finding", "outside-write", f"files outside the target changed: {extra[:3]}"
            )
        return None


def _named(target: Target, exc: BaseException, sandbox: Sandbox) -> bool:
    """A clean error names the file: DataError's path, or the YAML file in a ConfigError's text."""
    path = getattr(exc, "path", None)
    if path is not None:
        return True
    return any(name in str(exc) for name in os.listdir(sandbox.case_dir))


def check(
    target: Target, case: Case, sandbox: Sandbox, timeout: float = 5.0, mem_budget: int = MEM_BUDGET
) -> Result:
    """Run one input through the reader's entry point, in this process; classify the outcome."""
    write_case(case, sandbox.case_dir)
    if sandbox.work.exists():
        shutil.rmtree(sandbox.work)
    sandbox.work.mkdir()
    clean = target.clean()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        target.run(sandbox.case_dir, sandbox.work)
        result = Result("ok")
    except Hang:
        result = Result("finding", "hang", f"no answer within {timeout:g} s")
    except MemoryError:
        result = Result("finding", "memory", "MemoryError (address-space limit)")
    except clean as exc:
        result = Result("clean", detail=str(exc)[:300])
        if not _named(target, exc, sandbox):
            result = Result(
                "finding",
                f"unnamed:{_where(exc)}",
                f"error does not name the file: {str(exc)[:300]}",
            )
    except RecursionError as exc:
        result = Result("finding", f"RecursionError@{_where(exc)}", str(exc)[:300])
    except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = Result(
            "finding",
            f"{type(exc).__name__}@{_where(exc)}",
            f"{type(exc).__name__}: {str(exc)[:300]}",
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - rss0
    if grown > mem_budget:
        result = Result("finding", "memory", f"peak RSS grew {grown >> 20} MiB on one input")
    return sandbox.after() or result


# --- isolation: a forked worker with an address-space limit ---------------------------------------
def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


def _limit_memory() -> None:
    limit = _vm_size() + AS_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker(name: str, seed: int, start: int, stop: int, conn, root: str, timeout: float) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    target.clean()
    _limit_memory()
    sandbox = Sandbox(Path(root))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # readers' chatter (warnings, rich) off the campaign's output
    os.dup2(devnull, 2)
    counts = {"ok": 0, "clean": 0, "finding": 0}
    for i in range(start, stop):
        conn.send(("start", i))
        case = gen_case(target, seeds, seed, i)
        r = check(target, case, sandbox, timeout)
        counts[r.status] += 1
        if r.status == "finding":
            conn.send(("finding", i, r.signature, r.detail))
    conn.send(("done", counts))


@dataclass
class Campaign:
    reader: str
    seed: int
    inputs: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "clean": 0, "finding": 0})
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # signature -> first input
    wall_s: float = 0.0


def _record(c: Campaign, i: int, sig: str, detail: str) -> None:
    c.findings.setdefault(sig, {"index": i, "detail": detail, "count": 0})["count"] += 1


def warm(target: Target, root: Path) -> None:
    """Import what the reader imports (prefect, mlflow, torch: seconds) before any time limit
    runs."""
    import contextlib
    import io

    sandbox = Sandbox(root)
    for case in target.seeds():  # every seed: e.g. only a resampled WAV imports librosa/numba
        write_case(case, sandbox.case_dir)
        sandbox.work.mkdir(exist_ok=True)
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            contextlib.suppress(Exception),
        ):
            target.run(sandbox.case_dir, sandbox.work)
    shutil.rmtree(root, ignore_errors=True)


def run_campaign(
    reader: str,
    inputs: int,
    seed: int = 0,
    *,
    isolate: bool = True,
    timeout: float = 5.0,
    root: Path | None = None,
    batch: int = 2000,
    progress=None,
) -> Campaign:
    """``inputs`` inputs of campaign ``seed`` through ``reader``. ``isolate``: forked workers with
    an address-space limit, restarted past an input that killed or hung them (the hang/memory
    oracle); otherwise in this process (fast; SIGALRM and peak-RSS checks only)."""
    import tempfile

    target = TARGETS[reader]
    c = Campaign(reader, seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{reader}-") as tmp:
        base = Path(root or tmp)
        warm(target, base / "warm")
        if not isolate:
            seeds = target.seeds()
            sandbox = Sandbox(base / "sb")
            for i in range(inputs):
                r = check(target, gen_case(target, seeds, seed, i), sandbox, timeout)
                c.counts[r.status] += 1
                if r.status == "finding":
                    _record(c, i, r.signature, r.detail)
            c.inputs = inputs
        else:
            ctx = mp.get_context("fork")
            i = 0
            while i < inputs:
                stop = min(inputs, i + batch)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_worker,
                    args=(reader, seed, i, stop, child, str(base / f"w{i}"), timeout),
                )
                proc.start()
                child.close()
                current = i
                while True:
                    if not parent.poll(timeout * 4 + 30):
                        proc.kill()
                        _record(
                            c, current, "hang", f"worker stuck past {timeout * 4 + 30:g} s (C code)"
                        )
                        c.counts["finding"] += 1
                        i = current + 1
                        break
                    try:
                        msg = parent.recv()
                    except EOFError:
                        proc.join()
                        sig = f"crash:{proc.exitcode}"
                        _record(c, current, sig, f"worker died with exit code {proc.exitcode}")
                        c.counts["finding"] += 1
                        i = current + 1
                        break
                    if msg[0] == "start":
                        current = msg[1]
                    elif msg[0] == "finding":
                        _record(c, msg[1], msg[2], msg[3])
                    else:
                        for k, v in msg[1].items():
                            c.counts[k] += v
                        i = stop
                        break
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                parent.close()
                if progress:
                    progress(c, i)
            c.inputs = inputs
    c.wall_s = time.perf_counter() - t0
    return c


def check_isolated(
    target: Target, case: Case, root: Path, timeout: float = 5.0, hard_timeout: float | None = None
) -> Result:
    """``check`` in a forked child with the address-space limit; a hard hang or crash kills it."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def body():
        warm(target, root / "warm")
        _limit_memory()
        child.send(check(target, case, Sandbox(root), timeout).__dict__)

    proc = ctx.Process(target=body)
    proc.start()
    child.close()
    try:
        if not parent.poll(hard_timeout or timeout * 4 + 30):
            proc.kill()
            return Result("finding", "hang", "stuck (C code)")
        return Result(**parent.recv())
    except EOFError:
        proc.join()
        return Result("finding", f"crash:{proc.exitcode}", "died")
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        parent.close()


# --- shrinking ------------------------------------------------------------------------------------
def _isolated_kind(sig: str) -> bool:
    return sig in ("hang", "memory") or sig.startswith("crash:")


def reproduces(target: Target, case: Case, sig: str, sandbox: Sandbox, timeout: float) -> bool:
    if _isolated_kind(sig):
        return check_isolated(target, case, sandbox.root.parent / "iso", timeout).signature == sig
    return check(target, case, sandbox, timeout).signature == sig


def shrink(
    target: Target,
    case: Case,
    sig: str,
    sandbox: Sandbox,
    timeout: float = 5.0,
    max_tries: int = 400,
) -> Case:
    """Delta debugging (ddmin-style chunk removal) on each file of the case while ``sig`` holds."""
    tries = 0
    case = dict(case)
    for name in sorted(case):
        data = case[name]
        n = 2
        while len(data) >= 2 and tries < max_tries:
            chunk = max(1, len(data) // n)
            reduced = False
            for start in range(0, len(data), chunk):
                cand = data[:start] + data[start + chunk :]
                tries += 1
                if reproduces(target, {**case, name: cand}, sig, sandbox, timeout):
                    data, reduced = cand, True
                    n = max(n - 1, 2)
                    break
                if tries >= max_tries:
                    break
            if not reduced:
                if chunk == 1:
                    break
                n = min(len(data), n * 2)
        case[name] = data
    return case


# --- corpus ---------------------------------------------------------------------------------------
def finding_id(sig: str) -> str:
    return hashlib.sha1(sig.encode()).hexdigest()[:10]


def save_finding(
    reader: str,
    case: Case,
    sig: str,
    detail: str,
    *,
    seed: int,
    index: int,
    status: str = "fixed",
    note: str = "",
) -> Path:
    d = CORPUS / reader / finding_id(sig)
    write_case(case, d)
    (d / "finding.json").write_text(
        json.dumps(
            {
                "reader": reader,
                "signature": sig,
                "detail": detail,
                "seed": seed,
                "index": index,
                "status": status,
                "note": note,
            },
            indent=1,
        )
        + "\n"
    )
    return d


def corpus_entries() -> list[Path]:
    return sorted(p.parent for p in CORPUS.glob("*/*/finding.json"))


def corpus_bytes() -> int:
    return sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())


# --- CLI oracle -----------------------------------------------------------------------------------
def msaflow_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("msaflow")
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from msaflow.cli import main; main()"]
    )


def check_cli(target: Target, case: Case, sandbox: Sandbox, timeout: float = 120) -> Result:
    """The input through ``msaflow``: exit 0, or 2 with one stderr line naming the file and no
    traceback."""
    write_case(case, sandbox.case_dir)
    if sandbox.work.exists():
        shutil.rmtree(sandbox.work)
    sandbox.work.mkdir()
    argv = target.cli(sandbox.case_dir, sandbox.work)
    env = {
        **os.environ,
        "FUZZ_MARKER": str(sandbox.marker),
        "COLUMNS": "60",
        "MSAFLOW_HOME": str(sandbox.work / "home"),
    }
    try:
        p = subprocess.run(
            [*msaflow_cmd(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=sandbox.work,
        )
    except subprocess.TimeoutExpired:
        return Result("finding", "cli-hang", f"msaflow {' '.join(argv[:2])} ran past {timeout} s")
    err = p.stderr.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if "Traceback" in p.stderr:
        res = Result("finding", "cli-traceback", err[-300:])
    elif p.returncode not in (0, 2):
        res = Result("finding", f"cli-exit{p.returncode}", err[-300:])
    elif p.returncode == 2 and (len(lines) != 1 or str(sandbox.root) not in lines[0]):
        res = Result(
            "finding", "cli-message", f"expected one line naming the file, got: {err[:300]!r}"
        )
    else:
        res = Result("ok" if p.returncode == 0 else "clean", detail=err[:300])
    return sandbox.after() or res
