"""The one training engine, shared by the Prefect flows and the Optuna objective.

``train_model`` seeds everything, builds the model from its config alone, trains with per-epoch
atomic checkpoints (a killed process resumes from the last one and ends where an uninterrupted run
would), selects the best epoch on a validation metric, and evaluates that epoch on test. It knows
nothing of Prefect or MLflow: it returns a ``TrainResult`` with the full record (per-epoch metrics,
per-step and per-epoch model traces) for the tracking layer to log.
"""

from __future__ import annotations

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

from models import get_spec
from models.base import MSAModel, task_loss
from tasks.config import ConfigError, RunConfig
from tasks.data import Batch, iterate_batches, split_to_tensors
from tasks.metrics import metric_fn

EpochCallback = Callable[[int, dict[str, float]], None]
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    run_name: str
    task: str
    best_epoch: int
    best_valid: dict[str, float]  # "valid/..." at the best epoch
    test: dict[str, float]  # "test/..." of the best epoch; empty when test was not evaluated
    history: list[dict[str, float]]  # one row per epoch: epoch, train/..., valid/..., time/epoch_s
    step_traces: list[dict[str, float]]  # one row per optimisation step: step, epoch, sgm/...
    epoch_traces: list[dict[str, float]]  # one row per epoch: epoch, ipr/..., afm/..., probe/...
    checkpoint_dir: str | None
    device: str
    seconds: float
    resumed_from_epoch: int | None = None
    test_predictions: dict[str, np.ndarray] = field(default_factory=dict)  # "pred", "label"

    def summary(self) -> dict[str, Any]:
        return {"run_name": self.run_name, "best_epoch": self.best_epoch, **self.best_valid, **self.test}


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    return get_spec(cfg.model).model_cls(cfg.model_cfg)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer: expected adam, adamw or sgd, got {t.optimizer!r}")


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _target(batch: Batch, kind: str) -> torch.Tensor:
    return batch["class_label"] if kind == "classification" else batch["label"]


@torch.no_grad()
def predict(model: MSAModel, tensors: Batch, batch_size: int, device: torch.device, kind: str = "regression",
            amp: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Predictions, targets and the mean task loss over a split (eval mode)."""
    model.eval()
    preds, targets, loss_sum, n = [], [], 0.0, 0
    for batch in iterate_batches(tensors, batch_size, device):
        with _autocast(device, amp):
            out = model(batch)
        pred = out.pred.float()
        loss_sum += float(task_loss(pred, batch, kind)) * len(pred)
        n += len(pred)
        preds.append(pred.cpu().numpy())
        targets.append(_target(batch, kind).cpu().numpy())
    return np.concatenate(preds), np.concatenate(targets), loss_sum / max(n, 1)


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_best_model(checkpoint_dir: str | Path, cfg: RunConfig, device: str | torch.device = "cpu") -> MSAModel:
    """Rebuild the model from its config and load the best epoch's weights (``best.pt``)."""
    path = Path(checkpoint_dir) / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no best checkpoint (was training completed?)")
    state = torch.load(path, map_location=device, weights_only=False)
    if state["fingerprint"] != cfg.fingerprint():
        raise ConfigError(f"{path}: checkpoint was trained with another config (fingerprint mismatch)")
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    return model


def train_model(
    cfg: RunConfig,
    splits: dict[str, Any],
    *,
    task: str = "sentiment",
    class_names: Sequence[str] | None = None,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[EpochCallback] = (),
    evaluate_test: bool = True,
) -> TrainResult:
    """Train ``cfg`` on ``splits`` (``feature_store.SplitData`` for train, valid[, test]).

    ``callbacks`` run after each epoch's checkpoint with ``(epoch, record)``; an exception they raise
    (an Optuna ``TrialPruned``, an interrupt) propagates and leaves a resumable checkpoint behind.
    """
    for name in ("train", "valid") + (("test",) if evaluate_test else ()):
        if name not in splits or len(splits[name]) == 0:
            raise ConfigError(f"training needs a non-empty {name!r} split; got splits {sorted(splits)}")
    t = cfg.train
    start_time = time.perf_counter()
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    device = select_device(t.device)
    amp = t.amp and device.type == "cuda"
    kind = cfg.model_cfg.task  # "regression" | "classification"
    metrics_of = metric_fn(task, class_names)
    select_key, mode = t.select_metric, t.select_mode
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)

    seed_everything(t.seed, t.deterministic)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    train_t, valid_t = split_to_tensors(splits["train"]), split_to_tensors(splits["valid"])

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
            state = torch.load(last, map_location=device, weights_only=False)
            if state.get("fingerprint") != cfg.fingerprint():
                raise ConfigError(f"{last}: checkpoint belongs to another config; use a fresh checkpoint dir")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history, step_traces, epoch_traces = state["history"], state["step_traces"], state["epoch_traces"]
            best, global_step = state["best"], state["global_step"]
            start_epoch = resumed_from = state["epoch"] + 1
            _set_rng_state(state["rng"])

    for epoch in range(start_epoch, t.epochs):
        epoch_start = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n_seen = 0
        train_preds, train_targets = [], []
        for batch in iterate_batches(train_t, t.batch_size, device, shuffle=True, seed=t.seed * 100_003 + epoch):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                out = model(batch)
                total, parts = model.loss(out, batch)
            if not torch.isfinite(total):
                raise FloatingPointError(f"{cfg.run_name}: loss became {float(total.detach())} at epoch {epoch}, step {global_step}")
            total.backward()
            trace = model.after_backward(out, batch, epoch)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            bsz = len(batch["label"])
            n_seen += bsz
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * bsz
            if trace:
                step_traces.append({"step": global_step, "epoch": epoch, **trace})
            train_preds.append(out.pred.detach().float().cpu().numpy())
            train_targets.append(_target(batch, kind).cpu().numpy())
            global_step += 1
        epoch_trace = model.on_epoch_end(epoch)
        if epoch_trace:
            epoch_traces.append({"epoch": epoch, **epoch_trace})

        record: dict[str, float] = {"epoch": epoch}
        record.update({f"train/{k}": v / max(n_seen, 1) for k, v in sums.items()})
        record.update(_prefixed("train", metrics_of(np.concatenate(train_preds), np.concatenate(train_targets))))
        vpred, vtarget, vloss = predict(model, valid_t, t.eval_batch_size, device, kind, amp)
        valid = {"valid/loss": vloss, **_prefixed("valid", metrics_of(vpred, vtarget))}
        record.update(valid)
        record["time/epoch_s"] = time.perf_counter() - epoch_start
        history.append(record)
        if select_key not in valid:
            raise ConfigError(f"train.select_metric {select_key!r} is not computed for task {task!r}; have {sorted(valid)}")
        value = valid[select_key]
        if best["epoch"] < 0 or (not math.isnan(value) and better(value, best["value"])):
            best = {"epoch": epoch, "value": value, "valid": valid}
            if ckpt_dir is not None:
                _atomic_save({"fingerprint": cfg.fingerprint(), "epoch": epoch, "model": model.state_dict(),
                              "config": cfg.to_dict()}, ckpt_dir / "best.pt")
            else:
                best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt_dir is not None:
            _atomic_save({
                "version": CHECKPOINT_VERSION, "fingerprint": cfg.fingerprint(), "epoch": epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                "history": history, "step_traces": step_traces, "epoch_traces": epoch_traces,
                "best": best, "global_step": global_step,
            }, ckpt_dir / "last.pt")
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
        tpred, ttarget, tloss = predict(best_model, split_to_tensors(splits["test"]), t.eval_batch_size, device, kind, amp)
        test = {"test/loss": tloss, **_prefixed("test", metrics_of(tpred, ttarget))}
        test_predictions = {"pred": tpred, "label": ttarget}

    return TrainResult(
        run_name=cfg.run_name, task=task, best_epoch=int(best["epoch"]), best_valid=dict(best["valid"]),
        test=test, history=history, step_traces=step_traces, epoch_traces=epoch_traces,
        checkpoint_dir=str(ckpt_dir) if ckpt_dir else None, device=str(device),
        seconds=time.perf_counter() - start_time, resumed_from_epoch=resumed_from,
        test_predictions=test_predictions,
    )
