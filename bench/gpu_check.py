"""GPU check: every model family trains with AMP, a killed run resumes exactly, and throughput.

    .venv/bin/python bench/gpu_check.py  # on CUDA; prints "no GPU available" without one
    .venv/bin/python bench/gpu_check.py --device cpu --preset quick --scale 0.05 --steps 5
        # same checks, CPU

CI has no GPU, so this is the check to run wherever one is available (record the output in
BENCHMARKS.md). On a small ``sim-mosi`` store (``--scale`` of MOSI's size), for each family
(``--families``, default every registered one, each in its default variant and ``--preset``):

1. **One epoch with AMP** through ``tasks.train.train_model`` (bf16 autocast on CUDA; the engine
   never uses AMP on the CPU). Reports the engine's samples/s: train rows / epoch wall time,
   validation included.
2. **Kill and resume.** A child process trains 2 epochs into a checkpoint dir and SIGKILLs itself
   right after epoch 0's ``last.pt`` is written (a real kill, at a known point). This process then
   resumes from that dir and must end where an uninterrupted 2-epoch run ends: same per-epoch train
   loss and valid metrics and the same test metrics, exactly on the CPU and within ``--resume-tol``
   on CUDA (bf16 and atomics). Both runs use ``train.deterministic``. This catches a CUDA resume
   that cannot restore RNG state.
3. **Throughput with and without per-step host syncs** (issue 19), on the training step alone, same
   model, optimiser and batch size. ``synced``: as the engine's loop does it: each batch is copied
   host-to-device, and each step reads the loss (``isfinite``), its parts (``float``) and the
   predictions (``.cpu()``). ``sync-free``: the train split is put on the device once, batches are
   sliced there, and losses and predictions are accumulated on the device and read once at the end.
   The model's own hooks (``after_backward``, e.g. SGM) run in both. ``--warmup`` + ``--steps``
   timed steps, best of ``--repeats``.
4. **The engine's loop with and without per-step host syncs** (issue 19): ``train_model`` itself,
   ``--engine-epochs`` epochs with ``train.sync_every_step`` true (every step's loss, parts,
   predictions and traces read back at that step, as the loop before issue 19) and false (read
   once per epoch), the same config otherwise. Training steps per second over the epochs after
   the first (which pays for warm-up), validation on one batch of valid rows only (so the figure
   is the training steps'), best of ``--repeats``. It runs on the device under test and, with
   ``--cpu-engine`` (default on), on the CPU as well: its own table, labelled CPU. On a machine
   without CUDA, ``--device cpu`` runs every check on the CPU.

Exit code 0 when every check passed, 1 otherwise (the table says which).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# cuBLAS needs this before CUDA initialises for deterministic matmuls (the resume check).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from msaflow.feature_store import load_dataset, synthesize  # noqa: E402
from msaflow.models import registry  # noqa: E402
from msaflow.tasks.config import RunConfig, resolve_run_config  # noqa: E402
from msaflow.tasks.data import iterate_batches, split_to_tensors, standardize_splits  # noqa: E402
from msaflow.tasks.train import (  # noqa: E402
    _autocast,
    build_model,
    build_optimizer,
    optimizer_steps_per_epoch,
    seed_everything,
    train_model,
)

FAMILIES = ("mmafnet", "mmcl", "unimodal", "earlyfusion")


# -------------------------------------------------------------------------------------------- setup


def make_store(root: Path, scale: float, seed: int) -> Path:
    out = root / f"sim-mosi-{scale:g}"
    synthesize("mosi", out, seed=seed, scale=scale)
    return out


def load_splits(store: Path, standardize: bool = True):
    manifest, splits = load_dataset(store)
    splits, _ = standardize_splits(splits, standardize)
    return manifest, splits


def make_cfg(family: str, manifest, args: argparse.Namespace, **train: Any) -> RunConfig:
    overrides: dict[str, Any] = {"device": args.device, "amp": True, "seed": args.seed, **train}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    return resolve_run_config(
        family,
        None,
        args.preset,
        train_overrides=overrides,
        input_spec=manifest.input_spec(),
        data_kind=manifest.data_kind,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- checks


def check_epoch(family: str, manifest, splits, args) -> dict[str, Any]:
    """One epoch with AMP through the engine."""
    cfg = make_cfg(family, manifest, args, epochs=1)
    result = train_model(cfg, splits, data_kind=manifest.data_kind, evaluate_test=False)
    row = result.history[0]
    finite = all(math.isfinite(v) for k, v in row.items() if k.startswith(("train/loss", "valid/")))
    n_train = len(splits["train"])
    return {
        "ok": finite,
        "variant": cfg.variant,
        "batch_size": cfg.train.batch_size,
        "amp": bool(cfg.train.amp and result.device.startswith("cuda")),
        "device": result.device,
        "epoch_s": row["time/epoch_s"],
        "engine_samples_s": n_train / row["time/epoch_s"],
        "select": cfg.train.select_metric,
        "select_value": row.get(cfg.train.select_metric, float("nan")),
    }


def child_main(args: argparse.Namespace) -> None:
    """Train 2 epochs into ``--ckpt`` and SIGKILL this process right after epoch 0's checkpoint."""
    manifest, splits = load_splits(Path(args.store))
    cfg = make_cfg(args.child, manifest, args, epochs=2, deterministic=True)

    def kill_after_first(epoch: int, record: dict[str, float]) -> None:
        if epoch == 0:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    train_model(
        cfg,
        splits,
        data_kind=manifest.data_kind,
        checkpoint_dir=args.ckpt,
        callbacks=[kill_after_first],
    )
    sys.exit("error: the child was not killed after epoch 0")


def _diff(a: dict[str, float], b: dict[str, float]) -> float:
    keys = [k for k in a if k.startswith(("train/loss", "valid/", "test/"))]
    worst = 0.0
    for k in keys:
        x, y = a[k], b.get(k, float("nan"))
        if math.isnan(x) and math.isnan(y):
            continue
        worst = max(worst, abs(x - y) if math.isfinite(x - y) else math.inf)
    return worst


def check_resume(family: str, manifest, splits, args, work: Path) -> dict[str, Any]:
    try:
        return _check_resume(family, manifest, splits, args, work)
    finally:
        torch.use_deterministic_algorithms(
            False
        )  # seed_everything(deterministic=True) set it process-wide


def _check_resume(family: str, manifest, splits, args, work: Path) -> dict[str, Any]:
    cfg = make_cfg(family, manifest, args, epochs=2, deterministic=True)
    ref = train_model(
        cfg, splits, data_kind=manifest.data_kind, checkpoint_dir=work / f"{family}-uninterrupted"
    )
    ckpt = work / f"{family}-killed"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        family,
        "--store",
        str(args.store),
        "--ckpt",
        str(ckpt),
        "--device",
        args.device,
        "--preset",
        args.preset,
        "--seed",
        str(args.seed),
    ]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    killed = proc.returncode == -signal.SIGKILL
    out: dict[str, Any] = {"killed": killed, "child_rc": proc.returncode}
    if not killed or not (ckpt / "last.pt").is_file():
        out.update(ok=False, error=(proc.stderr.strip().splitlines() or ["no last.pt"])[-1])
        return out
    resumed = train_model(cfg, splits, data_kind=manifest.data_kind, checkpoint_dir=ckpt)
    diff = max(
        [_diff(a, b) for a, b in zip(ref.history, resumed.history, strict=False)]
        + [_diff(ref.test, resumed.test)]
    )
    tol = args.resume_tol if resumed.device.startswith("cuda") else 0.0
    out.update(
        resumed_from_epoch=resumed.resumed_from_epoch,
        max_abs_diff=diff,
        tol=tol,
        ok=resumed.resumed_from_epoch == 1 and len(resumed.history) == 2 and diff <= tol,
    )
    return out


def _step(model, opt, own, batch, amp, device):
    opt.zero_grad(set_to_none=True)
    if own is not None:
        own.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        out = model(batch)
        total, parts = model.loss(out, batch)
    return out, total, parts


def _finish(model, opt, own, out, total, batch):
    total.backward()
    model.after_backward(out, batch, 0)  # epoch 0: inside the modulation window, hooks active
    opt.step()
    if own is not None:
        own.step()


def run_synced(model, opt, own, train_t, bsz, device, amp, steps, seed) -> float:
    """The engine's hot path: H2D copy per batch, isfinite/float/.cpu() per step. Returns
    samples/s."""
    batches = _endless(
        lambda epoch: iterate_batches(train_t, bsz, device, shuffle=True, seed=seed + epoch), bsz
    )
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        out, total, parts = _step(model, opt, own, batch, amp, device)
        if not torch.isfinite(total):
            raise FloatingPointError("loss became non-finite")
        _finish(model, opt, own, out, total, batch)
        for v in parts.values():
            float(v)
        out.pred.detach().float().cpu().numpy()
        batch["label"].cpu().numpy()
    sync(device)
    return steps * bsz / (time.perf_counter() - t0)


def run_sync_free(model, opt, own, on_device, bsz, device, amp, steps, seed) -> float:
    """Data on the device once, batches sliced there, one host read at the end. Returns
    samples/s."""
    n = int(on_device["label"].shape[0])
    gen = torch.Generator(device=device).manual_seed(seed)

    def epoch_batches(_epoch):
        order = torch.randperm(n, generator=gen, device=device)
        for start in range(0, n - bsz + 1, bsz):
            idx = order[start : start + bsz]
            yield {k: v.index_select(0, idx) for k, v in on_device.items()}

    batches = _endless(epoch_batches, bsz)
    loss_sum = torch.zeros((), device=device)
    preds = []
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        out, total, parts = _step(model, opt, own, batch, amp, device)
        _finish(model, opt, own, out, total, batch)
        loss_sum += total.detach().float()
        preds.append(out.pred.detach())
    finite = bool(torch.isfinite(loss_sum))  # the one sync
    torch.cat(preds).float().cpu()
    elapsed = time.perf_counter() - t0
    if not finite:
        raise FloatingPointError("loss became non-finite")
    return steps * bsz / elapsed


def _endless(make, bsz):
    epoch = 0
    while True:
        for batch in make(epoch):
            if int(batch["label"].shape[0]) == bsz:
                yield batch
        epoch += 1


def check_throughput(family: str, manifest, splits, args) -> dict[str, Any]:
    cfg = make_cfg(family, manifest, args, epochs=1)
    device = torch.device(cfg.train.device if cfg.train.device != "auto" else args.device)
    amp = cfg.train.amp and device.type == "cuda"
    bsz = cfg.train.batch_size
    train_t = split_to_tensors(splits["train"])
    if int(train_t["label"].shape[0]) < bsz:
        return {"ok": False, "error": f"train split has fewer than {bsz} rows; raise --scale"}
    on_device = {k: v.to(device) for k, v in train_t.items()}
    best = {"synced": 0.0, "sync_free": 0.0}
    for _ in range(args.repeats):
        for mode in best:  # interleaved, each from the same fresh model
            seed_everything(args.seed)
            model = build_model(cfg).to(device)
            model.train()
            own = model.own_optimizer()
            own_params = [p for g in own.param_groups for p in g["params"]] if own else []
            opt = build_optimizer(model, cfg, exclude=own_params)
            run = run_synced if mode == "synced" else run_sync_free
            data = train_t if mode == "synced" else on_device
            run(model, opt, own, data, bsz, device, amp, args.warmup, args.seed)
            best[mode] = max(
                best[mode], run(model, opt, own, data, bsz, device, amp, args.steps, args.seed + 1)
            )
    return {
        "ok": True,
        "batch_size": bsz,
        "synced_samples_s": best["synced"],
        "sync_free_samples_s": best["sync_free"],
        "speedup": best["sync_free"] / best["synced"],
    }


def check_engine_throughput(family: str, manifest, splits, args, device: str) -> dict[str, Any]:
    """``train_model``'s training steps per second with per-step host syncs and without."""
    if args.engine_epochs < 2:
        return {"ok": False, "error": "--engine-epochs must be >= 2 (the first is not timed)"}
    valid = splits["valid"]
    small = {
        "train": splits["train"],
        "valid": valid.take(np.arange(min(len(valid), args.batch_size or 32))),
    }
    best = {True: 0.0, False: 0.0}
    steps = 0
    for _ in range(args.repeats):
        for sync in best:  # interleaved, so a busy machine slows both alike
            cfg = make_cfg(
                family,
                manifest,
                args,
                epochs=args.engine_epochs,
                device=device,
                sync_every_step=sync,
                patience=0,
            )
            steps = optimizer_steps_per_epoch(len(small["train"]), cfg.train)
            result = train_model(cfg, small, data_kind=manifest.data_kind, evaluate_test=False)
            timed = [r["time/epoch_s"] for r in result.history[1:]]
            best[sync] = max(best[sync], steps * len(timed) / sum(timed))
    return {
        "ok": True,
        "device": device,
        "steps_per_epoch": steps,
        "batch_size": cfg.train.batch_size,
        "synced_steps_s": best[True],
        "sync_free_steps_s": best[False],
        "speedup": best[False] / best[True],
    }


# --------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated model families")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--scale", type=float, default=0.25, help="sim-mosi size as a fraction of MOSI")
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per throughput round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--engine-epochs", type=int, default=3, help="epochs per engine throughput run (>= 2)"
    )
    ap.add_argument(
        "--cpu-engine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the engine's throughput on the CPU (a GPU run)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--resume-tol", type=float, default=1e-3, help="max |difference| after resume on CUDA"
    )
    ap.add_argument("--child-timeout", type=float, default=600)
    ap.add_argument(
        "--work", default="", help="folder for the store and checkpoints (default: a temp dir)"
    )
    ap.add_argument("--json", default="", help="also write the results as JSON to this file")
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated checks to skip: epoch,resume,throughput,engine",
    )
    # internal: the child process of the kill-and-resume check
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def environment(device: torch.device) -> dict[str, str]:
    info = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=f"{props.total_memory / 2**30:.0f}",
            cuda=str(torch.version.cuda),
            bf16=str(torch.cuda.is_bf16_supported()),
        )
    else:
        info.update(cpu_threads=str(torch.get_num_threads()))
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        child_main(args)
        return 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU available")
        return 0
    device = torch.device(args.device)
    known = set(registry())
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in known]
    if unknown:
        print(
            f"error: --families: unknown {unknown}; expected some of {sorted(known)}",
            file=sys.stderr,
        )
        return 2
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = make_store(work, args.scale, seed=0)
        args.store = str(store)
        manifest, splits = load_splits(store)
        info = environment(device)
        info.update(
            store=(
                f"sim-mosi scale {args.scale:g} "
                f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())})"
            ),
            preset=args.preset,
        )
        print("## GPU check\n")
        for k, v in info.items():
            print(f"- {k}: {v}")
        results: dict[str, dict[str, Any]] = {}
        for family in families:
            res: dict[str, Any] = {}
            for name, fn in (
                ("epoch", lambda f=family: check_epoch(f, manifest, splits, args)),
                ("resume", lambda f=family: check_resume(f, manifest, splits, args, work)),
                ("throughput", lambda f=family: check_throughput(f, manifest, splits, args)),
                (
                    "engine",
                    lambda f=family: check_engine_throughput(
                        f, manifest, splits, args, args.device
                    ),
                ),
                (
                    "engine_cpu",
                    lambda f=family: check_engine_throughput(f, manifest, splits, args, "cpu"),
                ),
            ):
                if name == "engine_cpu" and (device.type == "cpu" or not args.cpu_engine):
                    continue
                if name == "engine_cpu" and "engine" in skip:
                    continue
                if name in skip:
                    continue
                t0 = time.perf_counter()
                try:
                    res[name] = fn()
                except (
                    Exception
                ) as exc:  # a check that crashes is a failed check, reported, not fatal
                    res[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                res[name]["seconds"] = time.perf_counter() - t0
                status = "ok" if res[name]["ok"] else f"FAILED {res[name].get('error', '')}"
                print(f"{family} {name}: {status} ({res[name]['seconds']:.1f} s)", flush=True)
            results[family] = res
        report(results, device)
        total = time.perf_counter() - t_start
        print(f"\ntotal {total:.0f} s")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"environment": info, "results": results, "seconds": total},
                    indent=2,
                    default=float,
                )
            )
    return 0 if all(c["ok"] for r in results.values() for c in r.values()) else 1


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return (
        format(value, spec)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else str(value)
    )


def report(results: dict[str, dict[str, Any]], device: torch.device) -> None:
    if any(k in r for r in results.values() for k in ("epoch", "resume", "throughput")):
        _report_checks(results, device)
    engine_tables = [("engine", f"GPU ({device})" if device.type == "cuda" else "CPU")]
    if any("engine_cpu" in r for r in results.values()):
        engine_tables.append(("engine_cpu", "CPU"))
    for key, label in engine_tables:
        rows = [(f, r[key]) for f, r in results.items() if key in r]
        if not rows:
            continue
        print(
            f"\nEngine training loop on the {label} (train_model, train.sync_every_step; steps/s "
            "over the epochs after the first):\n"
        )
        print(
            f"| family | batch | steps/epoch | {label} steps/s, per-step syncs | {label} steps/s, "
            "one sync per epoch | ratio |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for family, c in rows:
            print(
                f"| {family} | {_fmt(c.get('batch_size'), 'd')} | "
                f"{_fmt(c.get('steps_per_epoch'), 'd')} | {_fmt(c.get('synced_steps_s'))} | "
                f"{_fmt(c.get('sync_free_steps_s'))} | {_fmt(c.get('speedup'), '.2f')} |"
            )
    for family, r in results.items():
        for name, c in r.items():
            if not c["ok"]:
                print(
                    f"FAILED {family} {name}: "
                    f"{c.get('error') or {k: v for k, v in c.items() if k != 'ok'}}"
                )


def _report_checks(results: dict[str, dict[str, Any]], device: torch.device) -> None:
    print(
        "\n| family | variant | batch | AMP | 1 epoch (s) | engine samples/s | kill+resume | max "
        "diff | synced samples/s | sync-free samples/s | sync-free / synced |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for family, r in results.items():
        e, k, t = r.get("epoch", {}), r.get("resume", {}), r.get("throughput", {})
        resume = "–" if not k else ("ok" if k["ok"] else "FAILED")
        if k and k.get("resumed_from_epoch") is not None:
            resume += f" (killed, resumed at epoch {k['resumed_from_epoch']})"
        print(
            f"| {family} | {_fmt(e.get('variant'))} | "
            f"{_fmt(e.get('batch_size') or t.get('batch_size'), 'd')} | "
            f"{'bf16' if e.get('amp') else ('off (CPU)' if device.type == 'cpu' else '–')} | "
            f"{_fmt(e.get('epoch_s'), '.2f')} | {_fmt(e.get('engine_samples_s'))} | {resume} | "
            f"{_fmt(k.get('max_abs_diff'), '.2g')} | {_fmt(t.get('synced_samples_s'))} | "
            f"{_fmt(t.get('sync_free_samples_s'))} | {_fmt(t.get('speedup'), '.2f')} |"
        )


if __name__ == "__main__":
    sys.exit(main())
