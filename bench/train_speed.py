"""Training speed on CPU of every MMAFNet and MMCL variant at the paper's MOSI shapes.

    .venv/bin/python bench/train_speed.py [--batch-sizes 32,64] [--steps 20] [--warmup 3]
        [--repeats 2] [--models mmafnet,mmcl] [--threads 0]

Shapes: T=50 for all three modalities, input dims 768/74/35 (BERT / COVAREP / Facet), the models'
``paper`` preset (MMAFNet hidden 128 and SGD; MMCL d=256 and Adam), never the quick preset. Inputs
are random tensors of full length (both models compute densely over T, so padding would not change
the work); labels are uniform in [-3, 3].

Steps are driven exactly as ``tasks.train.train_model`` drives them, with the model and optimizer
built by its own ``build_model`` / ``build_optimizer`` and batches cut by ``iterate_batches``:
zero_grad, forward, ``model.loss``, backward, ``model.after_backward`` (epoch 0, so SGM modulates),
optimizer step, and ``model.on_epoch_end`` once at the end (epoch 0: IPR blends). Only full-size
batches are timed: ``--warmup`` steps, then ``--steps`` timed steps; the configurations are run in
``--repeats`` interleaved rounds and each keeps its fastest round (the machine is shared).

Epoch time is extrapolated, not measured: 1284 training samples (MOSI's train split) at the timed
samples/s, plus one measured ``on_epoch_end``; the engine's validation pass is not included.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + loss + backward step (it
counts matmuls, convolutions and attention; elementwise work is not counted, and the optimizer step
is not in the count). Achieved FLOP/s = counted FLOPs per step / timed seconds per step, as a
fraction of this machine's peak: the best of several large float32 ``torch.mm`` calls, measured at
the start and at the end of the same run (the larger of the two is used).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from msaflow.modalities import MODALITIES
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.data import iterate_batches
from msaflow.tasks.train import build_model, build_optimizer

MOSI_TRAIN = 1284
SHAPES = {
    "text_dim": 768,
    "audio_dim": 74,
    "vision_dim": 35,
    "seq_len": 50,
    "head": "regression",
    "num_classes": 1,
}
VARIANTS = {
    "mmafnet": ("none", "sgm", "sgm_ipr", "full"),
    "mmcl": ("full", "no_csd", "no_selfattn", "no_crossattn"),
}


def machine_info() -> dict[str, str]:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "torch": torch.__version__,
        "threads": (
            f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"
        ),
    }


def load1() -> float:
    return os.getloadavg()[0]


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best float32 FLOP/s of an n x n x n ``torch.mm`` (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def random_split(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = SHAPES["seq_len"]
    out = {}
    for m in MODALITIES:
        out[m] = torch.randn(n, T, SHAPES[f"{m}_dim"], generator=g)
        out[f"{m}_len"] = torch.full((n,), T, dtype=torch.long)
    out["label"] = torch.rand(n, generator=g) * 6 - 3
    out["index"] = torch.arange(n)  # each row's position, as tasks.data.split_to_tensors gives
    return out


def full_batches(data: dict[str, torch.Tensor], bsz: int):
    """Endless full-size training batches, cut and shuffled as the engine does."""
    epoch = 0
    while True:
        for batch in iterate_batches(data, bsz, torch.device("cpu"), shuffle=True, seed=epoch):
            if len(batch["label"]) == bsz:
                yield batch
        epoch += 1


class Bench:
    """One (model, variant, batch size): model, optimizer and timings (best round kept)."""

    def __init__(self, model: str, variant: str, bsz: int, data: dict[str, torch.Tensor]) -> None:
        self.model_name, self.variant, self.bsz = model, variant, bsz
        self.cfg = resolve_run_config(
            model, variant, "paper", train_overrides={"batch_size": bsz}, input_spec=SHAPES
        )
        torch.manual_seed(0)
        self.model = build_model(self.cfg)
        self.own = self.model.own_optimizer()  # MMAFNet's SGM probes train with their own Adam
        own = [p for g in self.own.param_groups for p in g["params"]] if self.own else []
        self.opt = build_optimizer(self.model, self.cfg, exclude=own)
        self.batches = full_batches(data, bsz)
        self.step_s = math.inf
        self.after_backward_s = math.inf
        self.epoch_end_s = math.inf
        self.load = float("nan")
        self.flops = self.count_flops()

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One engine step; returns the seconds spent in ``after_backward``."""
        self.opt.zero_grad(set_to_none=True)
        out = self.model(batch)
        total, _parts = self.model.loss(out, batch)
        total.backward()
        t0 = time.perf_counter()
        self.model.after_backward(out, batch, 0)
        hook = time.perf_counter() - t0
        self.opt.step()
        if self.own is not None:
            self.own.step()
            self.own.zero_grad(set_to_none=True)
        out.pred.detach().float().cpu().numpy()  # the engine keeps train predictions
        return hook

    def count_flops(self) -> int:
        self.model.train()
        batch = next(self.batches)
        self.opt.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            out = self.model(batch)
            total, _ = self.model.loss(out, batch)
            total.backward()
        self.opt.zero_grad(set_to_none=True)
        self.model.on_epoch_end(0)  # drop what the counted forward accumulated
        return counter.get_total_flops()

    def run_round(self, warmup: int, steps: int) -> None:
        self.model.train()
        for _ in range(warmup):
            self.step(next(self.batches))
        batches = [next(self.batches) for _ in range(steps)]
        hooks = 0.0
        t0 = time.perf_counter()
        for batch in batches:
            hooks += self.step(batch)
        per_step = (time.perf_counter() - t0) / steps
        if per_step < self.step_s:
            self.step_s, self.after_backward_s, self.load = per_step, hooks / steps, load1()
        t0 = time.perf_counter()
        self.model.on_epoch_end(0)  # decides IPR's eq. 14 weights
        self.model.before_epoch(1)  # applies eq. 15 (the engine does this before the next epoch)
        self.epoch_end_s = min(self.epoch_end_s, time.perf_counter() - t0)

    @property
    def samples_s(self) -> float:
        return self.bsz / self.step_s

    @property
    def epoch_s(self) -> float:
        return MOSI_TRAIN / self.samples_s + self.epoch_end_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mmafnet,mmcl")
    ap.add_argument("--batch-sizes", default="32,64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = default")
    ap.add_argument("--peak-n", type=int, default=2048)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    info = machine_info()
    load_start = os.getloadavg()
    peak_start = matmul_peak(args.peak_n)
    data = random_split(MOSI_TRAIN)
    benches = [
        Bench(m, v, b, data)
        for m in args.models.split(",")
        for b in map(int, args.batch_sizes.split(","))
        for v in VARIANTS[m]
    ]
    for r in range(args.repeats):
        for bench in benches:
            bench.run_round(args.warmup, args.steps)
            print(
                f"round {r + 1}/{args.repeats} {bench.model_name}/{bench.variant} b={bench.bsz}: "
                f"{bench.samples_s:.1f} samples/s (load {load1():.2f})",
                flush=True,
            )
    peak_end = matmul_peak(args.peak_n)
    peak = max(peak_start, peak_end)
    load_end = os.getloadavg()

    print("\n## Machine\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(
        f"- matmul peak (float32 {args.peak_n}^3 torch.mm, best of 5): start "
        f"{peak_start / 1e9:.1f} GFLOP/s, end {peak_end / 1e9:.1f} GFLOP/s; using "
        f"{peak / 1e9:.1f}"
    )
    print(
        f"- load average (1/5/15 min): start {'/'.join(f'{x:.2f}' for x in load_start)}, "
        f"end {'/'.join(f'{x:.2f}' for x in load_end)}"
    )
    print(
        f"- timing: {args.warmup} warm-up + {args.steps} timed full-size steps per round, "
        f"best of {args.repeats} interleaved rounds; epoch = {MOSI_TRAIN} samples extrapolated "
        "+ one measured on_epoch_end, no validation"
    )

    print("\n## Results\n")
    print(
        "| model | variant | batch | optimizer | samples/s | ms/step | after_backward ms/step | "
        "on_epoch_end ms | epoch s (1284) | GFLOP/step (fwd+bwd) | GFLOP/s | % of peak | "
        "load 1-min |"
    )
    print(
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for b in benches:
        achieved = b.flops / b.step_s
        print(
            f"| {b.model_name} | {b.variant} | {b.bsz} | {b.cfg.train.optimizer} "
            f"| {b.samples_s:.1f} | {1e3 * b.step_s:.1f} | {1e3 * b.after_backward_s:.2f} "
            f"| {1e3 * b.epoch_end_s:.2f} | {b.epoch_s:.2f} | {b.flops / 1e9:.2f} "
            f"| {achieved / 1e9:.1f} | {100 * achieved / peak:.1f} | {b.load:.2f} |"
        )

    print("\n## Ratios (same run)\n")
    by = {(b.model_name, b.variant, b.bsz): b for b in benches}
    for bsz in map(int, args.batch_sizes.split(",")):
        full, none = by.get(("mmafnet", "full", bsz)), by.get(("mmafnet", "none", bsz))
        if full and none:
            ratio = full.epoch_s / none.epoch_s
            verdict = "meets" if ratio <= 1.3 else "MISSES"
            print(
                f"- batch {bsz}: MMAFNet full/none per epoch = {ratio:.2f}x "
                f"({verdict} the <= 1.3x goal)"
            )
        mmcl = by.get(("mmcl", "full", bsz))
        if full and mmcl:
            print(
                f"- batch {bsz}: MMCL full / MMAFNet full samples/s = "
                f"{mmcl.samples_s / full.samples_s:.2f}x "
                f"({mmcl.samples_s:.1f} vs {full.samples_s:.1f})"
            )


if __name__ == "__main__":
    main()
