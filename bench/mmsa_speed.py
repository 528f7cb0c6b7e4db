"""Epoch time of msaflow's TFN, LMF and MulT against thuiar/MMSA 2.2.1's, side by side in one run.

    .venv/bin/python bench/mmsa_speed.py [--n 1284] [--rounds 2] [--threads 1]
        [--models tfn,lmf,mult,misa,self_mm,mmafnet[,mult-refwork]]
        [--ref-python PATH | --ref-venv DIR]
        [--json PATH]

Data: random MOSI-shaped tensors, aligned, T=50, text 768 / audio 5 / vision 20 (MMSA's MOSI
features: BERT / COVAREP / Facet), ``--n`` training samples (1284 = MOSI's train split), labels
uniform in [-3, 3]. The same arrays go to both sides (a .npz file for the reference).

msaflow: each model's ``mmsa`` preset (``paper`` for MMAFNet, which has none), built by
``tasks.config.resolve_run_config`` and ``tasks.train.build_model`` / ``build_optimizer``, one
epoch run by the engine's own step loop, ``tasks.train.train_epoch`` (the function
``train_model`` calls: shuffled ``iterate_batches``, the last partial batch included; zero_grad,
forward, ``model.loss``, backward, ``after_backward``, the optional norm clip, the optimizer
step(s), the per-step values kept on the device and read back once at the epoch's end), with
``before_epoch``, the non-finite check, ``on_epoch_end`` and the epoch's predictions around it.
Every sample has its full length (``*_len`` = T), as the reference reads all T steps.

``mult-refwork`` (a timing row, not a preset) is our MulT doing the reference's work: its forward
(``causal`` variant, ``conv_padding="valid"``, no positional embedding) and its optimiser steps
(one per 8 batches, ``train.grad_accum_steps=8``), against the same reference epochs as ``mult``.

Reference: MMSA 2.2.1 from PyPI in its own venv (``--ref-venv``, created and filled on first use
with ``torch==<our torch version>`` and ``mmsa==2.2.1``; or an existing one, ``--ref-python``),
run as a subprocess that this script writes to a temporary file. MMSA's ``run()`` does not work
on CPU (``gpu_ids=[]`` crashes at ``torch.cuda.set_device``), so the worker builds the model
classes directly (``MMSA.models.singleTask.TFN`` / ``LMF`` / ``MULT``) from
``config_regression.json`` (model / mosi, via ``MMSA.config.get_config_regression``), feeds them
through MMSA's own ``MMDataLoader`` (its ``MMDataset`` reading a pickle in MMSA's format made from
the .npz, ``num_workers=0``), and runs the epoch loop of its trainers
(``MMSA/trains/singleTask/{TFN,LMF,MULT}.py``): the same optimiser parameter groups, L1 loss,
``loss.item()`` and the kept outputs per step; for MulT the gradient accumulation over
``update_epochs`` = 8 batches and ``clip_grad_value_`` after every backward. The trainers' tqdm
bars, train metrics and validation are left out on both sides.

Timing: ``--warmup-steps`` training steps per model on each side, then ``--rounds`` rounds; in each
round every model trains one full epoch on our side and one on the reference's (which goes first
alternates between rounds; the two processes never run at once). Each keeps its fastest epoch.
Every epoch is timed twice: wall clock and the process's CPU time (``time.process_time``); with
one intra-op thread a side's CPU time is the work it did, which other jobs on a loaded machine
inflate far less than its wall time. The loaders are also timed alone (one pass over the
training split, no model): "data s". Both processes use ``--threads`` torch intra-op threads and
the same ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.

MISA, Self-MM and MMAFNet are timed on our side only (samples/s, beside MMAFNet's): MMSA's MISA and
Self-MM fine-tune BERT on token ids, so their reference epoch is not the same computation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/feature_store.py must not shadow the package

MMSA_VERSION = "2.2.1"
MOSI_TRAIN = 1284
SHAPES = {
    "text_dim": 768,
    "audio_dim": 5,
    "vision_dim": 20,
    "seq_len": 50,
    "head": "regression",
    "num_classes": 1,
}
WITH_REFERENCE = ("tfn", "lmf", "mult", "mult-refwork")
PRESET = {"mmafnet": "paper"}  # every other model: "mmsa"
VARIANT = {"mmafnet": "full"}
# rows that are not a model at its preset: key -> (model, variant, preset, model overrides, train
# overrides). "mult-refwork" is our MulT doing the reference's work: its forward (the causal mask,
# "valid" convolutions, no positional embedding) and its optimiser steps (one per 8 batches,
# train.grad_accum_steps; the value clip scaled to the 1/8-weighted batch gradients). A timing
# row, not a preset: the reference clips the running sum of the group's gradients, the engine
# each batch's share, so the two do not train the same weights.
ROWS: dict[str, tuple[str, str, str, dict[str, Any], dict[str, Any]]] = {
    "mult-refwork": (
        "mult",
        "causal",
        "mmsa",
        {"conv_padding": "valid", "position_embedding": False, "grad_clip_value": 0.6 / 8},
        {"grad_accum_steps": 8},
    ),
}
# the reference model a row is timed against
REF_MODEL = {"mult-refwork": "mult"}

# --------------------------------------------------------------------------------------------
# The reference worker: run with the reference venv's python, reads JSON commands on stdin and
# answers one JSON line each on stdout.
# --------------------------------------------------------------------------------------------
REF_WORKER = r'''
import json, os, pickle, sys, time, traceback

import numpy as np
import torch
from torch import nn, optim

npz_path, threads, seed, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)

from MMSA.config import get_config_regression
from MMSA.data_loader import MMDataLoader
from MMSA.models.singleTask import LMF, MULT, TFN

CLASSES = {"tfn": TFN, "lmf": LMF, "mult": MULT}
arrays = np.load(npz_path)
N = int(arrays["label"].shape[0])


def write_pickle(path):
    """MMSA's feature pickle (its unaligned layout: *_lengths keys) from the .npz arrays."""
    def part(rows):
        n = len(rows)
        return {
            "text": arrays["text"][rows],
            "audio": arrays["audio"][rows],
            "vision": arrays["vision"][rows],
            "raw_text": ["x"] * n,
            "id": [f"s{i}" for i in rows],
            "regression_labels": arrays["label"][rows],
            "audio_lengths": [int(arrays["audio"].shape[1])] * n,
            "vision_lengths": [int(arrays["vision"].shape[1])] * n,
        }
    rows = np.arange(N)
    with open(path, "wb") as f:
        pickle.dump({"train": part(rows), "valid": part(rows[:2]), "test": part(rows[:2])}, f, 4)


PKL = os.path.join(workdir, "mmsa_features.pkl")
write_pickle(PKL)
STATE = {}


def setup(name):
    args = get_config_regression(name, "mosi")
    T = int(arrays["text"].shape[1])
    args.update(
        {
            "feature_dims": [int(arrays[m].shape[2]) for m in ("text", "audio", "vision")],
            "seq_lens": [T, T, T],
            "train_mode": "regression",
            "device": torch.device("cpu"),
            "custom_feature": PKL,
            "feature_T": "",
            "feature_A": "",
            "feature_V": "",
            "cur_seed": seed,
        }
    )
    torch.manual_seed(seed)
    loader = MMDataLoader(args, num_workers=0)["train"]
    model = CLASSES[name](args).to(args.device)
    if name == "tfn":  # trains/singleTask/TFN.py
        optimizer = optim.Adam(list(model.parameters())[2:], lr=args.learning_rate)
    elif name == "lmf":  # trains/singleTask/LMF.py
        optimizer = optim.Adam(
            [
                {"params": list(model.parameters())[:3], "lr": args.factor_lr},
                {"params": list(model.parameters())[5:], "lr": args.learning_rate},
            ],
            weight_decay=args.weight_decay,
        )
    else:  # trains/singleTask/MULT.py (its ReduceLROnPlateau steps on validation only)
        optimizer = optim.Adam(model.parameters(), lr=args.learning_rate)
    STATE[name] = {
        "args": args, "loader": loader, "model": model, "optimizer": optimizer,
        "criterion": nn.L1Loss(),
    }
    return {
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params_optimised": sum(
            p.numel() for g in optimizer.param_groups for p in g["params"] if p.requires_grad
        ),
        "batch_size": int(args.batch_size),
        "config": {k: v for k, v in args.items() if isinstance(v, (int, float, str, list, bool))},
    }


def train(name, max_steps=None):
    """One epoch of the reference trainer's loop (or its first max_steps batches)."""
    s = STATE[name]
    args, model, optimizer, criterion = s["args"], s["model"], s["optimizer"], s["criterion"]
    dev = args.device
    model.train()
    y_pred, y_true = [], []
    train_loss = 0.0
    steps = 0
    accumulate = name == "mult"
    left_epochs = args.update_epochs if accumulate else 0
    t0, c0, o0 = time.perf_counter(), time.process_time(), os.times()
    for batch_data in s["loader"]:
        if max_steps is not None and steps >= max_steps:
            break
        if accumulate and left_epochs == args.update_epochs:
            optimizer.zero_grad()
        if accumulate:
            left_epochs -= 1
        vision = batch_data["vision"].to(dev)
        audio = batch_data["audio"].to(dev)
        text = batch_data["text"].to(dev)
        labels = batch_data["labels"]["M"].to(dev).view(-1, 1)
        if not accumulate:
            optimizer.zero_grad()
        outputs = model(text, audio, vision)["M"]
        loss = criterion(outputs, labels)
        loss.backward()
        if accumulate:
            if args.grad_clip != -1.0:
                nn.utils.clip_grad_value_(
                    [p for p in model.parameters() if p.requires_grad], args.grad_clip
                )
        else:
            optimizer.step()
        train_loss += loss.item()
        y_pred.append(outputs.cpu())
        y_true.append(labels.cpu())
        if accumulate and not left_epochs:
            optimizer.step()
            left_epochs = args.update_epochs
        steps += 1
    if accumulate and not left_epochs:
        optimizer.step()
    o1 = os.times()
    return {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "steps": steps,
            "user_s": o1.user - o0.user, "sys_s": o1.system - o0.system,
            "load": os.getloadavg()[0]}


def data_only(name):
    t0 = time.perf_counter()
    n = 0
    for batch_data in STATE[name]["loader"]:
        n += len(batch_data["labels"]["M"])
    return {"s": time.perf_counter() - t0, "samples": n}


from importlib.metadata import version

print(json.dumps({"ready": True, "torch": torch.__version__, "mmsa": version("mmsa"),
    "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}),
    flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        op, name = cmd["op"], cmd.get("model")
        if op == "quit":
            break
        if op == "setup":
            out = setup(name)
        elif op == "warmup":
            out = train(name, max_steps=cmd["steps"])
        elif op == "epoch":
            out = train(name)
        elif op == "data":
            out = data_only(name)
        else:
            raise ValueError(f"unknown op {op!r}")
    except Exception:
        out = {"error": traceback.format_exc()}
    print(json.dumps(out), flush=True)
'''


def default_ref_venv() -> Path:
    home = os.environ.get("MSAFLOW_HOME")
    if home:
        return Path(home) / "bench" / "mmsa-ref"
    return Path.home() / ".cache" / "msaflow-bench" / "mmsa-ref"


def ensure_ref_venv(venv_dir: Path, torch_version: str) -> Path:
    """The reference venv's python; creates the venv and installs torch + mmsa when absent."""
    python = venv_dir / "bin" / "python"
    marker = venv_dir / ".msaflow-bench-ready"
    want = f"torch=={torch_version} mmsa=={MMSA_VERSION}"
    if python.exists() and marker.is_file() and marker.read_text().strip() == want:
        return python
    print(f"creating the reference venv {venv_dir} ({want}); this takes minutes", flush=True)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    # torch first, so that mmsa's requirement does not pull a CUDA build
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, f"mmsa=={MMSA_VERSION}"], check=True)
    marker.write_text(want + "\n")
    return python


class Reference:
    """The reference worker process: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, python: Path, npz: Path, threads: int, seed: int, workdir: Path) -> None:
        script = workdir / "mmsa_ref_worker.py"
        script.write_text(REF_WORKER)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONWARNINGS": "ignore",
        }
        self.proc = subprocess.Popen(
            [str(python), str(script), str(npz), str(threads), str(seed), str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(workdir),  # MMSA must not see this repository's models/ or tasks/
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        # MMSA may print to stdout (logging, warnings); skip lines that are not our JSON
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"reference worker exited (rc {self.proc.wait()})")
            line = line.strip()
            if line.startswith("{"):
                out = json.loads(line)
                if "error" in out:
                    raise RuntimeError(f"reference worker failed:\n{out['error']}")
                return out

    def __call__(self, op: str, model: str | None = None, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "model": model, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError):
                self("quit")
            self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------------------
# msaflow's side
# --------------------------------------------------------------------------------------------
def random_arrays(n: int, seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    T = SHAPES["seq_len"]
    out = {
        m: rng.standard_normal((n, T, SHAPES[f"{m}_dim"]), dtype=np.float32)
        for m in ("text", "audio", "vision")
    }
    out["label"] = rng.uniform(-3.0, 3.0, n).astype(np.float32)
    return out


def to_tensors(arrays: dict[str, Any]) -> dict[str, Any]:
    """The engine's training tensors (``tasks.data.split_to_tensors``'s keys), full lengths."""
    import torch

    n = len(arrays["label"])
    out: dict[str, Any] = {}
    for m in ("text", "audio", "vision"):
        out[m] = torch.from_numpy(arrays[m])
        out[f"{m}_len"] = torch.full((n,), arrays[m].shape[1], dtype=torch.long)
    out["label"] = torch.from_numpy(arrays["label"])
    out["index"] = torch.arange(n)
    return out


class Ours:
    """One msaflow model at its preset, trained epoch by epoch by the engine's own step loop
    (``tasks.train.train_epoch``, which ``train_model`` calls)."""

    def __init__(self, key: str, data: dict[str, Any], seed: int) -> None:
        import torch

        from msaflow.tasks.config import resolve_run_config
        from msaflow.tasks.train import build_model, build_optimizer

        name, variant, preset, model_over, train_over = ROWS.get(
            key, (key, VARIANT.get(key, "full"), PRESET.get(key, "mmsa"), {}, {})
        )
        self.key, self.name, self.data, self.seed = key, name, data, seed
        self.preset, self.variant = preset, variant
        self.cfg = resolve_run_config(
            name,
            variant,
            preset,
            model_overrides=model_over,
            train_overrides={"seed": seed, **train_over},
            input_spec=SHAPES,
        )
        torch.manual_seed(seed)
        self.model = build_model(self.cfg)
        self.own = self.model.own_optimizer()
        own = [p for g in self.own.param_groups for p in g["params"]] if self.own else []
        self.opt = build_optimizer(self.model, self.cfg, exclude=own)
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.epoch = 0
        self.step = 0

    @property
    def batch_size(self) -> int:
        return int(self.cfg.train.batch_size)

    def train(self, max_steps: int | None = None) -> dict[str, Any]:
        """One epoch of ``tasks.train.train_epoch`` (or of its first ``max_steps`` batches), with
        what ``train_model`` does around it but validation and train metrics: ``before_epoch``,
        the non-finite check, ``on_epoch_end`` and the epoch's predictions read back."""
        import torch

        from msaflow.tasks.train import train_epoch

        data = self.data
        if max_steps is not None:
            data = {k: v[: max_steps * self.batch_size] for k, v in data.items()}
        epoch = self.epoch
        t0, c0, o0 = time.perf_counter(), time.process_time(), os.times()
        self.model.before_epoch(epoch)
        log, self.step = train_epoch(
            self.model,
            self.cfg,
            data,
            self.opt,
            self.own,
            None,
            torch.device("cpu"),
            epoch,
            self.step,
        )
        log.raise_if_nonfinite(self.key)
        self.model.on_epoch_end(epoch)
        log.predictions()
        self.epoch += 1
        o1 = os.times()
        return {
            "s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "user_s": o1.user - o0.user,
            "sys_s": o1.system - o0.system,
            "steps": -(-len(data["label"]) // self.batch_size),
            "load": os.getloadavg()[0],
        }

    def data_only(self) -> dict[str, Any]:
        import torch

        from msaflow.tasks.data import iterate_batches

        t0 = time.perf_counter()
        n = 0
        for batch in iterate_batches(
            self.data, self.batch_size, torch.device("cpu"), shuffle=True, seed=self.seed
        ):
            n += len(batch["label"])
        return {"s": time.perf_counter() - t0, "samples": n}


# --------------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=MOSI_TRAIN, help="training samples (MOSI: 1284)")
    ap.add_argument("--rounds", type=int, default=2, help="timed epochs per model and side")
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed steps per model first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    ap.add_argument("--models", default="tfn,lmf,mult,misa,self_mm,mmafnet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-python", type=Path, help="python of a ready venv with mmsa==2.2.1")
    ap.add_argument(
        "--ref-venv",
        type=Path,
        default=default_ref_venv(),
        help="reference venv, created when absent (default: %(default)s)",
    )
    ap.add_argument("--no-reference", action="store_true", help="time msaflow's side only")
    ap.add_argument("--json", type=Path, help="save the figures here")
    args = ap.parse_args()

    # the same thread settings as the reference worker's, before torch loads (OpenMP and MKL read
    # them at start-up; torch.set_num_threads alone left this side's runtime configured otherwise)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch
    from train_speed import load1, machine_info  # bench/train_speed.py

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    with_ref = [] if args.no_reference else [m for m in models if m in WITH_REFERENCE]
    for m in with_ref:
        if REF_MODEL.get(m, m) not in models:
            raise SystemExit(f"{m} is timed against {REF_MODEL[m]}'s reference: add it to --models")
    info = machine_info()
    load_start = os.getloadavg()
    t_start = time.time()
    arrays = random_arrays(args.n, args.seed)
    data = to_tensors(arrays)

    with tempfile.TemporaryDirectory(prefix="mmsa-speed-") as tmp:
        workdir = Path(tmp)
        ref = None
        if with_ref:
            npz = workdir / "data.npz"
            np.savez(npz, **arrays)
            python = args.ref_python or ensure_ref_venv(
                args.ref_venv, torch.__version__.split("+")[0]
            )
            ref = Reference(python, npz, args.threads, args.seed, workdir)
            print(f"reference worker: {ref.info}", flush=True)
        try:
            ours = {m: Ours(m, data, args.seed) for m in models}
            refs: dict[str, dict[str, Any]] = {}
            # rows timed against another row's reference (REF_MODEL) after that row
            for m in sorted(models, key=lambda m: m in REF_MODEL):
                ours[m].train(max_steps=args.warmup_steps)
                if ref is not None and m in with_ref and REF_MODEL.get(m, m) != m:
                    refs[m] = refs[REF_MODEL[m]]  # set up (and timed) as that row
                elif ref is not None and m in with_ref:
                    refs[m] = ref("setup", m)
                    ref("warmup", m, steps=args.warmup_steps)
                    if refs[m]["batch_size"] != ours[m].batch_size:
                        raise SystemExit(
                            f"{m}: batch size differs: ours {ours[m].batch_size}, "
                            f"reference {refs[m]['batch_size']}"
                        )
            times: dict[str, dict[str, list[dict[str, Any]]]] = {
                m: {"ours": [], "ref": []} for m in models
            }
            for r in range(args.rounds):
                for m in models:
                    sides = ["ours", "ref"] if m in refs and REF_MODEL.get(m, m) == m else ["ours"]
                    if r % 2:
                        sides.reverse()
                    for side in sides:
                        out = ours[m].train() if side == "ours" else ref("epoch", m)
                        times[m][side].append(out)
                        print(
                            f"round {r + 1}/{args.rounds} {m} {side}: {out['s']:.2f} s/epoch, "
                            f"CPU {out['cpu_s']:.2f} s (user {out['user_s']:.2f}, system "
                            f"{out['sys_s']:.2f}; {out['steps']} steps, load {load1():.2f})",
                            flush=True,
                        )
            data_s = {
                m: {
                    "ours": min(ours[m].data_only()["s"] for _ in range(3)),
                    "ref": min(ref("data", REF_MODEL.get(m, m))["s"] for _ in range(3))
                    if m in refs
                    else None,
                }
                for m in models
            }
        finally:
            if ref is not None:
                ref.close()
    load_end = os.getloadavg()
    wall = time.time() - t_start

    rows = []
    for m in models:
        o = ours[m]
        ref_epochs = times[REF_MODEL.get(m, m)]["ref"] if m in refs else []
        best_ours = min(x["s"] for x in times[m]["ours"])
        best_ref = min((x["s"] for x in ref_epochs), default=None)
        cpu_ours = min(x["cpu_s"] for x in times[m]["ours"])
        cpu_ref = min((x["cpu_s"] for x in ref_epochs), default=None)
        rows.append(
            {
                "model": m,
                "variant": o.variant,
                "preset": o.preset,
                "batch_size": o.batch_size,
                "params_ours": o.params,
                "params_ref": refs[m]["params"] if m in refs else None,
                "params_ref_optimised": refs[m]["params_optimised"] if m in refs else None,
                "epoch_s_ours": best_ours,
                "epoch_s_ref": best_ref,
                "ratio": best_ours / best_ref if best_ref else None,
                "round_ratios": [
                    a["s"] / b["s"] for a, b in zip(times[m]["ours"], ref_epochs, strict=False)
                ],
                "cpu_s_ours": cpu_ours,
                "cpu_s_ref": cpu_ref,
                "cpu_ratio": cpu_ours / cpu_ref if cpu_ref else None,
                # the CPU time split, best epochs: user (the computation) and system (the
                # kernel's share: page faults of fresh allocations, mostly)
                "user_s_ours": min(x["user_s"] for x in times[m]["ours"]),
                "user_s_ref": min((x["user_s"] for x in ref_epochs), default=None),
                "sys_s_ours": min(x["sys_s"] for x in times[m]["ours"]),
                "sys_s_ref": min((x["sys_s"] for x in ref_epochs), default=None),
                "round_cpu_ratios": [
                    a["cpu_s"] / b["cpu_s"]
                    for a, b in zip(times[m]["ours"], ref_epochs, strict=False)
                ],
                "samples_s_ours": args.n / best_ours,
                "samples_s_ref": args.n / best_ref if best_ref else None,
                "data_s_ours": data_s[m]["ours"],
                "data_s_ref": data_s[m]["ref"],
                "epochs_ours": times[m]["ours"],
                "epochs_ref": ref_epochs,
            }
        )
    by = {r["model"]: r for r in rows}
    mmafnet = by.get("mmafnet")

    print("\n## Machine\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    if ref is not None:
        print(
            f"- reference: MMSA {ref.info.get('mmsa')}, torch {ref.info.get('torch')}, "
            f"{ref.info.get('threads')} intra-op / {ref.info.get('interop_threads')} inter-op "
            "threads"
        )
    print(
        f"- load average (1/5/15 min): start {'/'.join(f'{x:.2f}' for x in load_start)}, "
        f"end {'/'.join(f'{x:.2f}' for x in load_end)}; wall {wall:.0f} s"
    )
    print(
        f"- data: random, aligned T={SHAPES['seq_len']}, text {SHAPES['text_dim']} / audio "
        f"{SHAPES['audio_dim']} / vision {SHAPES['vision_dim']}, n={args.n} training samples; "
        f"{args.warmup_steps} warm-up steps, best of {args.rounds} interleaved epochs per side"
    )

    print("\n## Epoch time against MMSA 2.2.1 (same run)\n")
    print(
        "| model | batch | params ours / ref | msaflow s/epoch | reference s/epoch | "
        "ratio (ours / ref), best epochs | per-round ratios | CPU s/epoch ours / ref | "
        "CPU-time ratio | per-round CPU ratios | user s ours / ref | system s ours / ref | "
        "data s ours / ref |"
    )
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |"
    )
    for r in rows:
        if r["model"] not in refs:
            continue
        print(
            f"| {r['model']} | {r['batch_size']} | {r['params_ours']:,} / {r['params_ref']:,} "
            f"| {r['epoch_s_ours']:.2f} | {r['epoch_s_ref']:.2f} | **{r['ratio']:.2f}** "
            f"| {', '.join(f'{x:.2f}' for x in r['round_ratios'])} "
            f"| {r['cpu_s_ours']:.2f} / {r['cpu_s_ref']:.2f} | **{r['cpu_ratio']:.2f}** "
            f"| {', '.join(f'{x:.2f}' for x in r['round_cpu_ratios'])} "
            f"| {r['user_s_ours']:.2f} / {r['user_s_ref']:.2f} "
            f"| {r['sys_s_ours']:.2f} / {r['sys_s_ref']:.2f} "
            f"| {r['data_s_ours']:.3f} / {r['data_s_ref']:.3f} |"
        )

    print("\n## Training samples/s at MOSI's shapes (same run)\n")
    print(
        "| model | preset | batch | params | msaflow samples/s | reference samples/s | "
        "msaflow / MMAFNet |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        rel = r["samples_s_ours"] / mmafnet["samples_s_ours"] if mmafnet else None
        print(
            f"| {r['model']} | {r['preset']} | {r['batch_size']} | {r['params_ours']:,} "
            f"| {r['samples_s_ours']:.1f} | {fmt(r['samples_s_ref'], '.1f')} "
            f"| {fmt(rel, '.2f')}{'x' if rel is not None else ''} |"
        )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "machine": info,
                    "reference": ref.info if ref is not None else None,
                    "load_start": load_start,
                    "load_end": load_end,
                    "wall_s": wall,
                    "n": args.n,
                    "rounds": args.rounds,
                    "warmup_steps": args.warmup_steps,
                    "threads": args.threads,
                    "shapes": SHAPES,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nsaved {args.json}")


if __name__ == "__main__":
    main()
