"""The one training engine, shared by the Prefect flows and the Optuna objective.

``train_model`` seeds everything, builds the model from its config alone, trains with per-epoch
atomic checkpoints (a killed process resumes from the last one and ends where an uninterrupted run
would), selects the best epoch on a validation metric, and evaluates that epoch on test. It knows
nothing of Prefect or MLflow: it returns a ``TrainResult`` with the full record (per-epoch metrics,
per-step and per-epoch model traces) for the tracking layer to log.

Evaluation is ``evaluate``, the one function that scores a split, here and in the pipeline's
evaluate task: always fp32 (no autocast, whatever precision training used), so the epoch selected
on valid is scored on test at the same precision.

Checkpoints hold tensors and plain data only and are read with ``torch.load(weights_only=True)``
(on the CPU): a file that needs anything else is refused with a ``DataError`` naming it, never
unpickled (``MSAFLOW_HOME`` may be shared, and a planted ``last.pt`` must not run code).

The training step reads nothing back from the device (issue 19): loss parts, the loss itself
(for the non-finite check), predictions, targets and the models' per-step traces stay device
tensors (``_EpochLog``) and are read once, when the epoch's steps are done; a host read per step
would make the host wait for the device every step. ``train.sync_every_step`` restores per-step
reads (a benchmark and debug switch). Either way the same operations run in the same order, so
the weights, history and traces are the same.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msaflow.atomic import atomic_target
from msaflow.feature_store.schema import DataError
from msaflow.models import get_spec
from msaflow.models.base import MSAModel, Scalar, task_loss, to_host
from msaflow.tasks.config import ConfigError, RunConfig, TrainConfig
from msaflow.tasks.data import (
    Batch,
    iterate_batches,
    num_batches,
    num_rows,
    standardize_splits,
)
from msaflow.tasks.metrics import metric_fn
from msaflow.tasks.text_finetune import encoder_parameters, input_splits, split_tensors, wrap

EpochCallback = Callable[[int, dict[str, float]], None]
# (epoch, its history row, its per-step trace rows, its per-epoch trace rows): what a live
# tracker logs as each epoch ends
EpochSink = Callable[
    [int, list[dict[str, float]], list[dict[str, float]], list[dict[str, float]]], None
]
# 2: weights_only-loadable (plain RNG state), model hooks' own optimiser. The learning-rate
# schedule's state ("scheduler", None without one) needed no new version: a version-2 file of the
# code before it has another config fingerprint (the train fields it lacks) and is refused as such.
CHECKPOINT_VERSION = 2


@dataclass
class TrainResult:
    run_name: str
    data_kind: str
    best_epoch: int
    best_valid: dict[str, float]  # "valid/..." at the best epoch
    test: dict[str, float]  # "test/..." of the best epoch; empty when test was not evaluated
    history: list[dict[str, float]]  # one row per epoch: epoch, train/..., valid/..., time/epoch_s
    step_traces: list[dict[str, float]]  # one row per batch (optimiser step at k=1): step, sgm/...
    epoch_traces: list[dict[str, float]]  # one row per epoch: epoch, ipr/..., afm/..., probe/...
    checkpoint_dir: str | None
    device: str
    seconds: float
    resumed_from_epoch: int | None = None
    test_predictions: dict[str, np.ndarray] = field(default_factory=dict)  # "pred", "label"
    standardization: dict[str, Any] | None = None  # train-split feature statistics applied (to log)

    def summary(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "best_epoch": self.best_epoch,
            **self.best_valid,
            **self.test,
        }


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":  # CUDA, then Apple's MPS, then the CPU
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={preference!r} but CUDA is not available on this machine")
    return torch.device(preference)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_model(cfg: RunConfig) -> MSAModel:
    """The model from its config; with ``train.text_encoder=finetune``, wrapped with its text
    encoder (``tasks.text_finetune``)."""
    return wrap(get_spec(cfg.model).model_cls(cfg.model_cfg), cfg)


def count_trainable_params(cfg: RunConfig) -> int:
    """Trainable parameters of the model ``cfg`` builds (built on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except (RuntimeError, NotImplementedError):  # a constructor that computes on real tensors
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_optimizer(
    model: torch.nn.Module, cfg: RunConfig, exclude: Sequence[torch.nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """The engine's optimiser over the model's parameters, less ``exclude`` (those a model trains
    with its ``own_optimizer``). A fine-tuned text encoder is a second parameter group, at
    ``train.text_encoder_lr`` and ``text_encoder_weight_decay``."""
    t = cfg.train
    encoder = encoder_parameters(model)
    skip = {id(p) for p in (*exclude, *encoder)}
    params: Any = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    if encoder:
        own = {"lr": t.text_encoder_lr, "weight_decay": t.text_encoder_weight_decay}
        params = [{"params": params}, {"params": encoder, **own}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamax":  # Keras' Adamax defaults are torch's (betas 0.9/0.999, eps 1e-8)
        return torch.optim.Adamax(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer: expected adam, adamw, adamax or sgd, got {t.optimizer!r}")


LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The factor on ``train.lr`` for optimiser step ``step`` (0-based) of ``total_steps``.

    Warmup: steps ``0 .. warmup_steps - 1`` ramp linearly, ``(step + 1) / warmup_steps``, reaching
    the full rate on the last warmup step. After it, with ``p = (step - warmup_steps) /
    (total_steps - warmup_steps)`` in [0, 1): "constant" 1, "linear" ``1 - p``, "cosine"
    ``(1 + cos(pi p)) / 2``. Every step gets a positive rate; the decays would reach 0 one step
    after the last.
    """
    if schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"train.lr_schedule: expected one of {list(LR_SCHEDULES)}, got {schedule!r}"
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "linear":
        return 1.0 - p
    return 0.5 * (1.0 + math.cos(math.pi * p))


def optimizer_steps_per_epoch(train_rows: int, t: TrainConfig) -> int:
    """Optimiser steps in one epoch: one per ``grad_accum_steps`` batches, the last group of the
    epoch included when shorter."""
    batches = (train_rows + t.batch_size - 1) // t.batch_size
    return (batches + t.grad_accum_steps - 1) // t.grad_accum_steps


def warmup_steps(t: TrainConfig, steps_per_epoch: int) -> int:
    """``train.warmup_epochs`` in optimiser steps, rounded half up."""
    return int(t.warmup_epochs * steps_per_epoch + 0.5)


def build_scheduler(
    optimizer: torch.optim.Optimizer, t: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The engine optimiser's per-optimiser-step schedule (``lr_factor``); None for a constant rate
    without warmup, which leaves the optimiser exactly as before schedules existed. A model's own
    optimiser (``own_optimizer``) is not scheduled: it runs at the rate the model chose (the SGM
    probes must keep up with the features at their own pace; Self-MM's subnets follow the
    reference's fixed rates)."""
    warm = warmup_steps(t, steps_per_epoch)
    if t.lr_schedule == "constant" and warm == 0:
        return None
    total = t.epochs * steps_per_epoch

    def factor(step: int) -> float:  # a plain function: LambdaLR keeps no state of it
        return lr_factor(step, total, warm, t.lr_schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _target(batch: Batch, head: str) -> torch.Tensor:
    return batch["class_label"] if head == "classification" else batch["label"]


def _cat_to_numpy(tensors: list[torch.Tensor]) -> np.ndarray:
    if not tensors:  # what np.concatenate of the per-batch arrays raised
        raise ValueError("need at least one array to concatenate")
    return torch.cat(tensors).cpu().numpy()


@torch.no_grad()
def predict(
    model: MSAModel, tensors: Batch, batch_size: int, device: torch.device, head: str = "regression"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Predictions, targets and the mean task loss over a split (eval mode, fp32).

    Autocast is switched off here, even inside a caller's autocast region: bf16 would quantise
    predictions at the third decimal of MAE, and validation and test must use one precision.
    Batches are kept on the device and read back once, at the end.
    """
    model.eval()
    preds, targets, losses, sizes = [], [], [], []
    for batch in iterate_batches(tensors, batch_size, device):
        with torch.autocast(device.type, enabled=False):
            out = model(batch)
        pred = out.pred.float()
        losses.append(task_loss(pred, batch, head))
        sizes.append(len(pred))
        preds.append(pred)
        targets.append(_target(batch, head))
    loss_sum = 0.0
    for loss, n in zip(to_host(losses), sizes, strict=True):  # the per-batch float sum, as before
        loss_sum += loss * n
    return _cat_to_numpy(preds), _cat_to_numpy(targets), loss_sum / max(sum(sizes), 1)


class _EpochLog:
    """An epoch's per-step outputs, held as device tensors until ``flush`` reads them back together.

    ``flush`` once per epoch is the engine's one host sync of the training steps; once per step
    (``train.sync_every_step``) it is the loop of before issue 19. Either way the host sees the
    same floats in the same order: loss-part sums are the per-step float sums they always were.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.sums: dict[str, float] = {}
        self.n_seen = 0
        self.steps: list[dict[str, float]] = []  # trace rows, read back
        self._bad: tuple[float, int] | None = None  # the first non-finite loss and its step
        self._preds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._pending: list[
            tuple[int, torch.Tensor, dict[str, Scalar], dict[str, Scalar], int]
        ] = []
        self._pending_preds: list[torch.Tensor] = []
        self._pending_targets: list[torch.Tensor] = []

    def add(
        self,
        step: int,
        total: torch.Tensor,
        parts: dict[str, Scalar],
        trace: dict[str, Scalar],
        pred: torch.Tensor,
        target: torch.Tensor,
    ) -> None:
        self._pending.append((step, total.detach(), parts, trace, len(target)))
        self._pending_preds.append(pred.detach().float())
        self._pending_targets.append(target)

    def flush(self) -> None:
        """Read the pending steps back: one transfer per device and dtype."""
        if not self._pending:
            return
        flat: list[Scalar] = []
        for _, total, parts, trace, _ in self._pending:
            flat += [total, *parts.values(), *trace.values()]
        host = iter(to_host(flat))
        for step, _, parts, trace, bsz in self._pending:
            total = next(host)
            if self._bad is None and not math.isfinite(total):
                self._bad = (total, step)
            self.n_seen += bsz
            for k in parts:
                self.sums[k] = self.sums.get(k, 0.0) + next(host) * bsz
            row = {k: next(host) for k in trace}
            if row:
                self.steps.append({"step": step, "epoch": self.epoch, **row})
        self._preds.append(torch.cat(self._pending_preds).cpu().numpy())
        self._targets.append(torch.cat(self._pending_targets).cpu().numpy())
        self._pending, self._pending_preds, self._pending_targets = [], [], []

    def raise_if_nonfinite(self, run_name: str) -> None:
        if self._bad is not None:
            value, step = self._bad
            raise FloatingPointError(nonfinite_message(run_name, value, self.epoch, step))

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self._preds), np.concatenate(self._targets)


def nonfinite_message(run_name: str, value: float, epoch: int, step: int) -> str:
    return f"{run_name}: loss became {value} at epoch {epoch}, step {step}"


def _bank_grads(params: Sequence[torch.nn.Parameter], bank: list[torch.Tensor | None]) -> None:
    """Move each parameter's gradient (this batch's alone, after its hook) into ``bank``, the
    gradient accumulated over the group so far, and clear it for the next batch's backward."""
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        if bank[i] is None:
            bank[i] = p.grad
        else:
            bank[i].add_(p.grad)
        p.grad = None


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


def evaluate(
    model: MSAModel,
    tensors: Batch,
    *,
    split: str,
    data_kind: str,
    class_names: Sequence[str] | None,
    head: str,
    batch_size: int,
    device: torch.device,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The one evaluation of a split: ``{"<split>/loss", "<split>/<metric>"...}``, predictions and
    targets, in fp32 (``predict``). Used for validation and test in ``train_model`` and by the
    pipeline's evaluate task."""
    pred, target, loss = predict(model, tensors, batch_size, device, head)
    metrics = {
        f"{split}/loss": loss,
        **_prefixed(split, metric_fn(data_kind, class_names)(pred, target)),
    }
    return metrics, pred, target


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain data, so ``weights_only=True`` can read it back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [int(version), list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    # set_rng_state takes a CPU ByteTensor only (a CUDA one raises TypeError)
    return t.detach().to("cpu", torch.uint8)


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].cpu().numpy().astype(np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["gauss"]),
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in state["cuda"]])


def load_checkpoint(path: str | Path, required: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint msaflow wrote: on the CPU (RNG states must stay CPU tensors; model and
    optimiser states are moved by ``load_state_dict``), with ``weights_only=True``. Anything that
    is not tensors and plain data is refused as a ``DataError``; there is no unsafe fallback."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- pickle/zip/EOF errors alike: not a checkpoint we read
        raise DataError(
            path,
            "checkpoint",
            "a checkpoint written by msaflow (tensors and plain data "
            f"only; refused to load it: {type(exc).__name__})",
        ) from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise DataError(
            path,
            "checkpoint",
            f"a checkpoint written by msaflow with keys {list(required)}; missing {missing}",
        )
    return state


CHECKPOINT_FILES = ("last.pt", "best.pt")


def clear_checkpoints(checkpoint_dir: str | Path) -> None:
    """Remove the checkpoints msaflow writes in ``checkpoint_dir`` (``last.pt``, ``best.pt`` and
    their temporaries) so the next run trains from scratch; anything else there is left alone, and
    the folder goes only when that leaves it empty."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return
    for name in CHECKPOINT_FILES:
        for path in (folder / name, *folder.glob(f".{name}.tmp-*")):
            if path.is_file() and not path.is_symlink():
                path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_target(path, durable=True) as tmp:
        torch.save(obj, tmp)


def load_best_model(
    checkpoint_dir: str | Path, cfg: RunConfig, device: str | torch.device = "cpu"
) -> MSAModel:
    """Rebuild the model from its config and load the best epoch's weights (``best.pt``)."""
    path = Path(checkpoint_dir) / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no best checkpoint (was training completed?)")
    state = load_checkpoint(path, ("fingerprint", "model"))
    if state["fingerprint"] != cfg.fingerprint():
        raise ConfigError(
            f"{path}: checkpoint was trained with another config (fingerprint mismatch)"
        )
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    return model


def train_epoch(
    model: MSAModel,
    cfg: RunConfig,
    train_t: Batch,
    optimizer: torch.optim.Optimizer,
    own_optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    epoch: int,
    global_step: int,
) -> tuple[_EpochLog, int]:
    """One epoch's training steps, as ``train_model`` runs them (its docstring: accumulation,
    clipping, the schedule, the one host read): the epoch's log, read back (``flush``ed) but not
    yet checked for a non-finite loss, and the global step after it. ``model.before_epoch`` is the
    caller's; ``bench/mmsa_speed.py`` times this very function."""
    t = cfg.train
    amp = t.amp and device.type == "cuda"
    head = cfg.model_cfg.head
    own_params = (
        [p for g in own_optimizer.param_groups for p in g["params"]] if own_optimizer else []
    )
    main_params = [p for g in optimizer.param_groups for p in g["params"]]
    accum_params = main_params + own_params  # every gradient the optimisers step on
    train_rows = num_rows(train_t)
    n_batches = num_batches(train_t, t.batch_size)
    accum = t.grad_accum_steps
    model.train()
    log = _EpochLog(epoch)
    bank: list[torch.Tensor | None] = [None] * len(accum_params)
    for i, batch in enumerate(
        iterate_batches(train_t, t.batch_size, device, shuffle=True, seed=t.seed * 100_003 + epoch)
    ):
        group_start = i - i % accum
        if i == group_start:
            optimizer.zero_grad(set_to_none=True)
            if own_optimizer is not None:
                own_optimizer.zero_grad(set_to_none=True)
        steps_now = i + 1 == n_batches or i - group_start + 1 == accum
        with _autocast(device, amp):
            out = model(batch)
            total, parts = model.loss(out, batch)
        if t.sync_every_step and not torch.isfinite(total):
            raise FloatingPointError(
                nonfinite_message(cfg.run_name, float(total.detach()), epoch, global_step)
            )
        bsz = len(batch["label"])
        if accum == 1:
            total.backward()
        else:  # the batch's share of its group's rows: the group's gradient is their mean
            group_rows = min(train_rows, (group_start + accum) * t.batch_size)
            group_rows -= group_start * t.batch_size
            (total * (bsz / group_rows)).backward()
        trace = model.after_backward(out, batch, epoch)
        if accum > 1:
            _bank_grads(accum_params, bank)  # this batch's gradient, as its hook left it
            if steps_now:
                for p, g in zip(accum_params, bank, strict=True):
                    p.grad = g
                bank = [None] * len(accum_params)
        if steps_now:
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(main_params, t.grad_clip)
            optimizer.step()
            if own_optimizer is not None:
                own_optimizer.step()
            if scheduler is not None:
                scheduler.step()
        log.add(global_step, total, parts, trace or {}, out.pred, _target(batch, head))
        if t.sync_every_step:
            log.flush()
        global_step += 1
    log.flush()  # the epoch's one read from the device
    return log, global_step


def train_model(
    cfg: RunConfig,
    splits: dict[str, Any],
    *,
    data_kind: str = "sentiment",
    class_names: Sequence[str] | None = None,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[EpochCallback] = (),
    evaluate_test: bool = True,
    epoch_sink: EpochSink | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``splits`` (``feature_store.SplitData`` for train, valid[, test]).

    Per epoch: ``model.before_epoch`` (what the previous epoch decided, e.g. IPR's reset), the
    training steps, ``model.on_epoch_end``, validation (``evaluate``, fp32), ``best.pt`` when the
    selection metric improved, ``last.pt``, then the callbacks. So validation and checkpoints see
    the parameters as trained, and a run resumed from ``last.pt`` redoes the pending reset.
    ``callbacks`` run after each epoch's checkpoint with ``(epoch, record)``; an exception they
    raise (an Optuna ``TrialPruned``, an interrupt) propagates and leaves a resumable checkpoint
    behind. ``epoch_sink``, before them, gets the epoch's history row and trace rows (live
    tracking). A checkpoint that is not plain tensors and data is refused (``load_checkpoint``).

    The steps read nothing back from the device; the epoch's values are read once after its last
    step (module docstring). A non-finite loss is found then: a ``FloatingPointError`` naming the
    run, the epoch and the first bad step, raised before ``on_epoch_end``, validation or any
    checkpoint of that epoch (so ``last.pt`` stays the previous epoch's; with
    ``train.sync_every_step`` it is raised at the step, before its backward).

    Gradient accumulation (``train.grad_accum_steps`` k): the optimisers step after every k
    batches and after the epoch's last batch (a shorter last group steps too). Each batch's loss
    is weighted by its share of its group's rows (1/k for k equal batches) before its backward, so
    a group's gradient is the mean over its rows, as one batch of those rows would give; the norm
    clip (``train.grad_clip``) then acts on that accumulated gradient, before the step. Each
    batch's ``model.after_backward`` sees that batch's gradient alone: the engine moves every
    gradient aside before the next backward and adds them up for the step. So SGM modulates each
    batch's contribution with that batch's own probe accuracies (eq. 10 per batch, as at k = 1;
    not one phi from the whole group), and MISA's and MulT's clipping by value clips each batch's
    gradient, as the references do per backward. Per-step trace rows stay one per batch, and
    ``step`` counts batches (equal to optimiser steps at k = 1). The model's own optimiser
    accumulates and steps with the engine's.

    The learning-rate schedule (``train.lr_schedule``, ``train.warmup_epochs``; ``lr_factor``)
    moves the engine optimiser's rate once per optimiser step; its state is in ``last.pt``, so a
    resumed run continues the schedule where it stopped. The default (constant, no warmup) builds
    no scheduler at all.
    """
    for name in ("train", "valid") + (("test",) if evaluate_test else ()):
        if name not in splits or len(splits[name]) == 0:
            raise ConfigError(
                f"training needs a non-empty {name!r} split; got splits {sorted(splits)}"
            )
    t = cfg.train
    start_time = time.perf_counter()
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    device = select_device(t.device)
    head = cfg.model_cfg.head  # "regression" | "classification"
    metrics_of = metric_fn(data_kind, class_names)
    select_key, mode = t.select_metric, t.select_mode
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)

    seed_everything(t.seed, t.deterministic)
    model = build_model(cfg).to(device)
    own_optimizer = model.own_optimizer()
    own_params = (
        [p for g in own_optimizer.param_groups for p in g["params"]] if own_optimizer else []
    )
    optimizer = build_optimizer(model, cfg, exclude=own_params)
    # Per-dimension feature statistics fit on train only, applied to every split
    # (train.standardize).
    # (with a fine-tuned text encoder, the store's text features are dropped first: tokens instead)
    splits, standardization = standardize_splits(input_splits(splits, cfg), enabled=t.standardize)
    train_t, valid_t = split_tensors(splits["train"], cfg), split_tensors(splits["valid"], cfg)
    train_rows = num_rows(train_t)
    scheduler = build_scheduler(optimizer, t, optimizer_steps_per_epoch(train_rows, t))

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    history: list[dict[str, float]] = []
    step_traces: list[dict[str, float]] = []
    epoch_traces: list[dict[str, float]] = []
    best = {"epoch": -1, "value": math.inf if mode == "min" else -math.inf, "valid": {}}
    start_epoch, global_step, resumed_from = 0, 0, None

    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = ckpt_dir / "last.pt"
        if last.is_file():
            state = load_checkpoint(last, ("version", "fingerprint"))
            if state["version"] != CHECKPOINT_VERSION:
                raise DataError(
                    last,
                    "version",
                    f"checkpoint version {CHECKPOINT_VERSION}, got {state['version']!r}; "
                    "use a fresh checkpoint dir",
                )
            if state.get("fingerprint") != cfg.fingerprint():
                raise ConfigError(
                    f"{last}: checkpoint belongs to another config; use a fresh checkpoint dir"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if own_optimizer is not None:
                own_optimizer.load_state_dict(state["own_optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            history, step_traces, epoch_traces = (
                state["history"],
                state["step_traces"],
                state["epoch_traces"],
            )
            best, global_step = state["best"], state["global_step"]
            start_epoch = resumed_from = state["epoch"] + 1
            _set_rng_state(state["rng"])

    for epoch in range(start_epoch, t.epochs):
        # checked before each epoch, from the state so far, so a resumed run stops where the
        # uninterrupted one did
        if t.patience > 0 and best["epoch"] >= 0 and epoch - 1 - best["epoch"] >= t.patience:
            break
        epoch_start = time.perf_counter()
        steps_before, epochs_before = len(step_traces), len(epoch_traces)
        # what the previous epoch decided for the parameters (IPR's reset) happens only now, after
        # that epoch was validated and checkpointed; a resumed run redoes it from last.pt
        model.before_epoch(epoch)
        log, global_step = train_epoch(
            model, cfg, train_t, optimizer, own_optimizer, scheduler, device, epoch, global_step
        )
        log.raise_if_nonfinite(cfg.run_name)
        step_traces.extend(log.steps)
        epoch_trace = model.on_epoch_end(epoch)
        if epoch_trace:
            epoch_traces.append({"epoch": epoch, **epoch_trace})

        record: dict[str, float] = {"epoch": epoch}
        record.update({f"train/{k}": v / max(log.n_seen, 1) for k, v in log.sums.items()})
        record.update(_prefixed("train", metrics_of(*log.predictions())))
        valid, _, _ = evaluate(
            model,
            valid_t,
            split="valid",
            data_kind=data_kind,
            class_names=class_names,
            head=head,
            batch_size=t.eval_batch_size,
            device=device,
        )
        record.update(valid)
        record["time/epoch_s"] = time.perf_counter() - epoch_start
        history.append(record)
        if select_key not in valid:
            raise ConfigError(
                f"train.select_metric {select_key!r} is not computed for task {data_kind!r}; have "
                f"{sorted(valid)}"
            )
        value = valid[select_key]
        if best["epoch"] < 0 or (not math.isnan(value) and better(value, best["value"])):
            best = {"epoch": epoch, "value": value, "valid": valid}
            if ckpt_dir is not None:
                _atomic_save(
                    {
                        "fingerprint": cfg.fingerprint(),
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "config": cfg.to_dict(),
                    },
                    ckpt_dir / "best.pt",
                )
            else:
                best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt_dir is not None:
            _atomic_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "fingerprint": cfg.fingerprint(),
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "own_optimizer": own_optimizer.state_dict()
                    if own_optimizer is not None
                    else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": _rng_state(),
                    "history": history,
                    "step_traces": step_traces,
                    "epoch_traces": epoch_traces,
                    "best": best,
                    "global_step": global_step,
                },
                ckpt_dir / "last.pt",
            )
        if epoch_sink is not None:
            epoch_sink(epoch, [record], step_traces[steps_before:], epoch_traces[epochs_before:])
        for callback in callbacks:
            callback(epoch, record)

    test: dict[str, float] = {}
    test_predictions: dict[str, np.ndarray] = {}
    if evaluate_test:
        if ckpt_dir is not None:
            best_model = load_best_model(ckpt_dir, cfg, device)
        else:
            best_model = model
            best_model.load_state_dict(best["state"])
        test, tpred, ttarget = evaluate(
            best_model,
            split_tensors(splits["test"], cfg),
            split="test",
            data_kind=data_kind,
            class_names=class_names,
            head=head,
            batch_size=t.eval_batch_size,
            device=device,
        )
        test_predictions = {"pred": tpred, "label": ttarget}

    return TrainResult(
        run_name=cfg.run_name,
        data_kind=data_kind,
        best_epoch=int(best["epoch"]),
        best_valid=dict(best["valid"]),
        test=test,
        history=history,
        step_traces=step_traces,
        epoch_traces=epoch_traces,
        checkpoint_dir=str(ckpt_dir) if ckpt_dir else None,
        device=str(device),
        seconds=time.perf_counter() - start_time,
        resumed_from_epoch=resumed_from,
        test_predictions=test_predictions,
        standardization=standardization.to_dict() if standardization is not None else None,
    )
