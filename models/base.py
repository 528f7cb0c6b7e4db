"""The contract every msaflow model follows, so one engine trains them all.

A model is a pure ``nn.Module``: no data loading, tracking or orchestration inside.
The engine (``tasks/train.py``) drives it through five calls:

1. ``out = model(batch)`` -- ``batch`` is a dict of tensors (see ``BATCH_KEYS``).
2. ``total, parts = model.loss(out, batch)`` -- the objective and its named parts.
3. after ``total.backward()`` and before ``optimizer.step()``:
   ``model.after_backward(out, batch, epoch)`` -> per-step trace (e.g. SGM's omega/phi). With
   ``train.grad_accum_steps`` > 1 the hook sees the gradient of this batch alone (the engine adds
   it to the accumulated one afterwards), so a hook that scales or clips gradients acts per batch.
4. after each training epoch: ``model.on_epoch_end(epoch)`` -> per-epoch trace
   (e.g. IPR's distances and reset weights, AFM gate means, probe accuracies).
5. before each training epoch, after the previous epoch was validated and checkpointed:
   ``model.before_epoch(epoch)`` (e.g. IPR's eq. 15 reset, decided at the previous epoch's end).

``model.own_optimizer()``, called once, may return an optimiser for parameters the model trains
at its own pace (MMAFNet's SGM probes); the engine leaves those out of its optimiser, steps both,
and checkpoints both.

Trace keys use ``group/name`` (``sgm/omega_t``); the engine logs them as they are.

Loss parts and per-step trace values are floats, 0-dim tensors or ``Deferred`` (``Scalar``).
Return tensors from the hot path: the engine keeps them on the device and reads a whole epoch's
values at once (``to_host``), where a ``float()`` per step would wait for the device every step.
A ``Deferred`` is a value the host derives from device tensors at that read, for a formula whose
host result must be kept exactly (SGM's traced phi: ``math.tanh``, which torch's tanh differs from
in the last bit). Per-epoch traces are floats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from msaflow.modalities import MODALITIES, SHORT, Modality  # noqa: F401 (re-exported)
from msaflow.models.spec import PaperTable, ParamSpec, TableSpec, TraceFamily

# Keys of a batch dict. Features are float32 (B, T, d); lengths int64 (B,);
# "label" float32 (B,) always present (regression target, or the class id as float);
# "class_label" int64 (B,) present for classification datasets;
# "index" int64 (B,) each row's position in its split (tasks.data.split_to_tensors), so a model can
# keep a per-sample memory of the training split (Self-MM's ULGM labels).
BATCH_KEYS = (
    "text",
    "audio",
    "vision",
    "text_len",
    "audio_len",
    "vision_len",
    "label",
    "class_label",
    "index",
)

HeadKind = Literal["regression", "classification"]  # the model's output: one score or C logits


@dataclass(frozen=True)
class Deferred:
    """A per-step trace value computed on the host, ``fn(*floats)``, from 0-dim device tensors
    when the engine reads the epoch's values back (``to_host``); ``float()`` reads it at once."""

    fn: Callable[..., float]
    tensors: tuple[torch.Tensor, ...]

    def __float__(self) -> float:
        return float(self.fn(*(float(t) for t in self.tensors)))


# a loss part or per-step trace value: a 0-dim tensor (on the device; read once per epoch), a float
# or a Deferred
Scalar = float | torch.Tensor | Deferred


def to_host(values: Sequence[Scalar]) -> list[float]:
    """Floats of ``values``, each exactly ``float(value)``, with one transfer per device and dtype
    for all the tensors among them (a ``Deferred``'s included) rather than one per value."""
    flat: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            flat.append(v)
        elif isinstance(v, Deferred):
            flat.extend(v.tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(flat):
        groups.setdefault((t.device, t.dtype), []).append(i)
    read: list[float] = [0.0] * len(flat)
    for idx in groups.values():
        host = torch.stack([flat[i].detach().reshape(()) for i in idx]).cpu().tolist()
        for i, x in zip(idx, host, strict=True):
            read[i] = float(x)
    out, pos = [], 0
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(read[pos])
            pos += 1
        elif isinstance(v, Deferred):
            n = len(v.tensors)
            out.append(float(v.fn(*read[pos : pos + n])))
            pos += n
        else:
            out.append(float(v))
    return out


def host_dict(values: Mapping[str, Scalar]) -> dict[str, float]:
    """``to_host`` of a dict's values: loss parts or a trace as plain floats."""
    return dict(zip(values, to_host(list(values.values())), strict=True))


@dataclass
class InputSpec:
    """Fields every model config shares; the engine fills them from the dataset manifest."""

    text_dim: int = 768
    audio_dim: int = 74
    vision_dim: int = 35
    seq_len: int = 50
    head: HeadKind = "regression"  # the output kind (the dataset's label_kind)
    num_classes: int = 1  # 1 for regression; C for classification


@dataclass
class ModelOutput:
    pred: torch.Tensor  # (B,) for regression, (B, C) logits for classification
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # what loss/hooks need


class MSAModel(nn.Module):
    """Base class: default hooks do nothing."""

    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        raise NotImplementedError

    def after_backward(
        self, out: ModelOutput, batch: dict[str, torch.Tensor], epoch: int
    ) -> dict[str, Scalar]:
        return {}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def before_epoch(self, epoch: int) -> None:
        return None

    def own_optimizer(self) -> torch.optim.Optimizer | None:
        return None


def task_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], head: HeadKind) -> torch.Tensor:
    """L_task: L1 for regression (as MMSA's MOSI/MOSEI trainers), cross-entropy for classes."""
    if head == "regression":
        return nn.functional.l1_loss(pred.reshape(-1), batch["label"].reshape(-1))
    return nn.functional.cross_entropy(pred, batch["class_label"].long())


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one model family, defined in its own file.

    ``variants`` maps an ablation name to config overrides; ``presets`` maps a preset name to
    ``{"model": {...}, "train": {...}}`` overrides. Only differences from defaults are listed.

    ``search_space`` is what ``msaflow tune`` searches by default, ``optional_space`` what
    ``--include`` may add; ``traces`` the trace families the run plots and the report draw;
    ``tables`` the results tables this model reproduces (name -> spec, with the paper's figures);
    ``references`` paper tables kept for reference that no table runs (a comparison with other
    methods).
    """

    name: str
    config_cls: type
    model_cls: type
    variants: dict[str, dict]
    presets: dict[str, dict]
    default_variant: str = "full"
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    optional_space: dict[str, ParamSpec] = field(default_factory=dict)
    traces: tuple[TraceFamily, ...] = ()
    tables: dict[str, TableSpec] = field(default_factory=dict)
    references: tuple[PaperTable, ...] = ()
