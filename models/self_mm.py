"""Self-MM: self-supervised multi-task learning with generated unimodal labels (Yu, Xu, Yuan and
Wu, "Learning Modality-Specific Representations with Self-Supervised Multi-Task Learning for
Multimodal Sentiment Analysis", AAAI 2021).

One multimodal task and three unimodal tasks share the modality representations. The unimodal tasks
have no human labels: the ULGM (unimodal label generation module) makes them, per training sample,
from how far each representation lies from the positive and negative class centres, relative to the
multimodal representation, and refines them across epochs with a momentum update.

Blocks (the paper's symbols; equation numbers are not cited because the paper's text is not in this
workspace -- ``shared/papers`` holds MMAFNet and MMCL only -- so each block names its quantity):

- F_t: the text representation. The reference fine-tunes BERT and reads the [CLS] state; here text
  comes as frozen features (B, T, d_t), pooled over the valid tokens (``text_pool``: "mean", or
  "first" = the first token, the reference's [CLS] read for BERT token features). No parameters.
- F_a, F_v: sLSTM subnets (``AuViSubNet``): an LSTM over the valid frames, its final hidden state,
  dropout, a Linear.
- Multimodal task: F_m* = ReLU(W1 [F_t; F_a; F_v] + b1) after dropout, then two more layers to
  y_m_hat (``Head``). Unimodal tasks: F_s* = ReLU(W1_s F_s + b1_s), then two layers to y_s_hat.
- ULGM (``LabelMemory`` and the functions above it), regression only:
  C_p^k, C_n^k = the means of the stored F_k* over the training samples whose label for k is > 0
  (>= 0 without ``exclude_zero``) or < 0 (k = m uses y_m, k = s the current generated y_s);
  alpha_k = (||F_k* - C_n^k|| - ||F_k* - C_p^k||) / (||F_k* - C_p^k|| + eps), the relative
  distance; y_s_new = (y_m alpha_s / alpha_m + y_m + alpha_s - alpha_m) / 2, the mean of the
  ratio and the shift relations, clipped to [-H, H] (``label_bound``); momentum over epochs,
  y_s^(n) = (n - 1)/(n + 1) y_s^(n-1) + 2/(n + 1) y_s_new with n the 1-based epoch, y_s^(1) = y_m.
- Objective: L = L1(y_m_hat, y_m) + sum_s mean_i tanh(|y_s^i - y_m^i|) |y_s_hat^i - y_s^i|
  (``unimodal_weight`` scales the sum; 1 in the paper and the reference). Validation and test use
  y_m_hat only (the engine's ``task_loss`` on ``pred``).

How the engine drives ULGM (``models/base.py``): ``loss`` reads each training sample's current
generated labels by ``batch["index"]`` (its row in the training split, ``tasks.data``); after the
backward pass, ``after_backward`` updates the labels of the batch (from ``start_epoch`` on) with the
centres of the memory as it stood before this batch, then stores the batch's F* -- the reference's
order (labels, then features, then centres). The memory (features F_k*, labels, a seen flag) is made
of persistent buffers, sized to the training split lazily (the engine does not pass the split's
size to the model; ``LabelMemory._load_from_state_dict`` resizes before loading), so ``last.pt``
and ``best.pt`` carry it and a resumed run is exact. Before ``start_epoch`` every y_s equals y_m, so
every unimodal weight tanh(0) is 0: no unimodal loss at all (the reference's first epoch). A
sample's label is updated after its batch's backward pass, and each sample comes once an epoch, so
generated labels first enter the loss in the epoch after ``start_epoch`` (the reference's third). On
random features over four epochs, ``LabelMemory`` gave bit-identical labels to the reference
trainer's ``update_labels`` / ``update_features`` / ``update_centers`` (a one-off check in the
reference's venv; the tests check the equations by hand instead, needing no MMSA).

Parity with thuiar/MMSA 2.2.1 (PyPI mmsa==2.2.1, models/multiTask/SELF_MM.py, trainer
trains/multiTask/SELF_MM.py)
-------------------------------------------------------------------------------------------------
- Trainable parameters at the ``mmsa`` preset and MOSI's MMSA shapes (text 768, audio 5, vision 20,
  T=50): reference 109,641,572 in all, of which its BertTextEncoder (bert-base-uncased) is
  109,482,240, so 159,332 without BERT; ours 159,332 (no text parameters: frozen features). The
  ``mmsa-mosei`` preset at 768/74/35: 165,668 both. ``paper`` at MOSI's shapes: 206,980 both with
  MMSA's model class; the authors' own models/SELF_MM.py adds two Linear layers ("# test":
  audio_classifier, video_classifier, 50 parameters) that no forward uses, 207,030 there; we leave
  them out. ``tests/models/test_self_mm.py`` asserts the three.
- Outputs: the reference's M, T, A, V (B, 1) are our ``pred`` (B,) and ``extras["pred_t"|"pred_a"|
  "pred_v"]`` (B,); its Feature_f, Feature_t, Feature_a, Feature_v are ``extras["feat_m"|"feat_t"|
  "feat_a"|"feat_v"]`` (B, post_*_dim) (``REFERENCE_OUTPUTS``).

Every difference from the reference, and why
--------------------------------------------
- Text: frozen features, no BERT (issue 18: frozen by default, ``train.text_encoder="frozen"``).
  The reference's text is the fine-tuned BERT-base [CLS] state; ``text_pool="mean"`` (default) is
  the masked mean of the frozen token features, "first" the first token. Its ``t_bert_dropout`` is
  read by no module there either. ``train.text_encoder="finetune"`` (the engine's wrapper,
  ``tasks/text_finetune.py``; this model is unchanged) fine-tunes an encoder on the store's raw
  text and feeds its last hidden states as the text features: the offline all-MiniLM-L6-v2
  (384-d) unless ``train.text_encoder_path`` names a local BERT checkpoint, up to
  ``train.text_max_tokens`` = 50 tokens. With ``text_pool="first"`` F_t is then the fine-tuned
  [CLS] state, as the reference (the presets keep "mean", so frozen runs are unchanged).
- Gradient accumulation: the reference steps Adam once per ``update_epochs`` = 4 batches of 16, on
  the sum of their gradients; the engine steps every batch. Our ``mmsa`` preset uses batch_size 64
  (16 x 4) and each weight decay divided by 4: Adam's step is invariant to the gradient's scale, and
  the reference's step sees 4 x mean gradient + wd p = 4 (mean gradient + wd/4 p), so this is the
  reference's optimiser trajectory up to Adam's eps. What remains different: the ULGM updates once
  per 64 samples instead of 16 (centres move little per batch), and the reference never steps the
  gradients of the last incomplete group of an epoch (its ``if not left_epochs`` after the loop is
  never true); we step every batch.
- Optimiser groups: the reference trains the audio and vision subnets with their own learning rates
  and weight decays (5e-3 / 1e-3 on MOSI, Adam with L2 decay like ``torch.optim.Adam``). Here
  ``own_optimizer`` returns an Adam over those two subnets (``audio_lr``, ``vision_lr``, their
  weight decays); 0 gives a subnet back to the engine's optimiser. It is Adam whatever
  ``train.optimizer`` is (as the reference), and the engine's ``grad_clip`` does not reach it (the
  reference does not clip). The reference's BERT group (lr 5e-5, weight decay 1e-3) is, under
  ``train.text_encoder="finetune"``, the engine's encoder group: ``train.text_encoder_lr`` (default
  5e-5) and ``train.text_encoder_weight_decay`` (default 0; the reference's 1e-3 is 2.5e-4 under
  the accumulation mapping's division by 4, above).
- Early stopping: the reference trains until 8 epochs bring no better valid loss (its KeyEval is
  the L1 loss); the presets stop the same way (``patience`` 8) under a cap of ``epochs`` (30) and
  keep the best on valid MAE (the reference selects on the valid L1 loss: the same epoch).
- Empty classes and degenerate values: the reference averages an empty set into a NaN centre
  (then NaN labels forever) when a class has no training sample, and divides by zero when
  alpha_m = -eps. Here a label update is skipped while a needed centre has no sample (traced as
  ``ulgm/skipped_steps``; with labels >= 0 only, e.g. a depression score, ULGM never starts and the
  model is the multimodal task), and a non-finite new label keeps the previous one.
- Lengths: the reference packs audio and vision with the text lengths on aligned data and their own
  on unaligned data; we use each modality's own ``<m>_len`` (equal on aligned data). A row with no
  valid frame gets the LSTM's initial state (zeros) as its final state (the reference would crash).
  ``final_states[0].squeeze(0)`` is the last layer's state for one layer; we take the last layer's
  state for any number of layers.
- Label memory: the reference fills every label before training (``init_labels``); ours fills a
  sample's labels the first time it is seen, which only differs inside epoch 1, where the labels are
  not updated and the centres not read.
- Modalities with ``*_dim`` 0 are left out (subnet, head and subtask); the reference needs all
  three.

Classification (4-class emotion): ULGM is defined for a signed regression label only (its centres
split the samples by label sign and its generated labels are real values), so it is disabled there:
the unimodal heads are trained on the class label with cross-entropy, weight 1 (times
``unimodal_weight``) -- the ``no_ulgm`` variant's objective; no label memory is kept.

Presets. ``mmsa``: MMSA 2.2.1's ``config_regression.json`` for MOSI (``mmsa-mosei`` for MOSEI),
with the accumulation mapping above. ``paper``: the paper's text is not available here, so its
settings are taken from the authors' release of the paper's code, thuiar/Self-MM
``config/config_regression.py`` (MOSI), which differs from MMSA's: batch 32 x 4, subnet lrs
1e-3 / 1e-4, subnet weight decays 1e-2 / 1e-3, LSTM widths 32 / 64, post_text_dim 64, other
dropouts, and a positive centre over labels >= 0 (``exclude_zero`` False).

The unverified point: the architecture follows both code releases, which agree (three layers per
head); the paper's text could not be checked here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from msaflow.errors import ConfigError
from msaflow.models.base import (
    MODALITIES,
    SHORT,
    InputSpec,
    ModelOutput,
    ModelSpec,
    MSAModel,
    Scalar,
    task_loss,
)
from msaflow.models.spec import ParamSpec, TraceFamily

EPS = 1e-8  # the reference's MIN in the relative distance and the ratio alpha_s / alpha_m
ACCUMULATION = 4  # MMSA's update_epochs: batches of gradient summed per Adam step (docstring)

# reference output -> ours (``pred`` or an ``extras`` key)
REFERENCE_OUTPUTS = {
    "M": "pred",
    "T": "pred_t",
    "A": "pred_a",
    "V": "pred_v",
    "Feature_f": "feat_m",
    "Feature_t": "feat_t",
    "Feature_a": "feat_a",
    "Feature_v": "feat_v",
}


@dataclass
class SelfMMConfig(InputSpec):
    """Self-MM hyper-parameters; defaults are MMSA 2.2.1's for MOSI (``mmsa`` preset)."""

    # F_t: pooling of the frozen text features (the reference fine-tunes BERT, reads [CLS])
    text_pool: Literal["mean", "first"] = "mean"
    # F_a, F_v: sLSTM subnets (a_lstm_*, v_lstm_*, audio_out, video_out)
    audio_hidden: int = 16
    vision_hidden: int = 32
    audio_out: int = 16
    vision_out: int = 32
    audio_lstm_layers: int = 1
    vision_lstm_layers: int = 1
    audio_lstm_dropout: float = 0.0  # between LSTM layers and after the final state
    vision_lstm_dropout: float = 0.0
    # heads: width of F* (the ULGM's representation) and the dropout before the first layer
    post_fusion_dim: int = 128
    post_text_dim: int = 32
    post_audio_dim: int = 16
    post_vision_dim: int = 32
    post_fusion_dropout: float = 0.0
    post_text_dropout: float = 0.1
    post_audio_dropout: float = 0.1
    post_vision_dropout: float = 0.0
    # the objective and ULGM
    subtasks: str = "tav"  # unimodal tasks trained: any of t, a, v ("" = the multimodal task alone)
    ulgm: bool = True  # False: the unimodal tasks learn y_m (weight 1); classification always
    start_epoch: int = 1  # 0-based epoch of the first label update (the reference: its 2nd epoch)
    label_bound: float = 3.0  # H: generated labels are clipped to [-H, H]
    exclude_zero: bool = True  # positive centre over labels > 0 (False: >= 0)
    unimodal_weight: float = 1.0  # scales the unimodal losses (1 in the paper and the reference)
    # the subnets' own Adam (the reference's optimiser groups); 0 = the engine's optimiser
    audio_lr: float = 5e-3
    vision_lr: float = 5e-3
    audio_weight_decay: float = 1e-3 / ACCUMULATION
    vision_weight_decay: float = 1e-3 / ACCUMULATION


def validate_config(cfg: SelfMMConfig) -> None:
    """Raise ``ConfigError`` naming the field for values the model cannot be built with."""
    if cfg.text_pool not in ("mean", "first"):
        raise ConfigError(f"self_mm.text_pool: expected 'mean' or 'first', got {cfg.text_pool!r}")
    if cfg.head not in ("regression", "classification"):
        raise ConfigError(
            f"self_mm.head: expected 'regression' or 'classification', got {cfg.head!r}"
        )
    if cfg.head == "classification" and cfg.num_classes < 2:
        raise ConfigError(f"self_mm.num_classes: classification needs >= 2, got {cfg.num_classes}")
    for name in (
        "audio_hidden",
        "vision_hidden",
        "audio_out",
        "vision_out",
        "audio_lstm_layers",
        "vision_lstm_layers",
        "post_fusion_dim",
        "post_text_dim",
        "post_audio_dim",
        "post_vision_dim",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"self_mm.{name}: expected an integer >= 1, got {getattr(cfg, name)}")
    for name in (
        "audio_lstm_dropout",
        "vision_lstm_dropout",
        "post_fusion_dropout",
        "post_text_dropout",
        "post_audio_dropout",
        "post_vision_dropout",
    ):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(
                f"self_mm.{name}: expected a value in [0, 1), got {getattr(cfg, name)}"
            )
    if len(set(cfg.subtasks)) != len(cfg.subtasks) or set(cfg.subtasks) - set("tav"):
        raise ConfigError(
            f"self_mm.subtasks: expected distinct letters of 'tav', got {cfg.subtasks!r}"
        )
    if cfg.start_epoch < 0:
        raise ConfigError(f"self_mm.start_epoch: expected >= 0, got {cfg.start_epoch}")
    if not (math.isfinite(cfg.label_bound) and cfg.label_bound > 0):
        raise ConfigError(
            f"self_mm.label_bound: expected a finite value > 0, got {cfg.label_bound}"
        )
    for name in (
        "unimodal_weight",
        "audio_lr",
        "vision_lr",
        "audio_weight_decay",
        "vision_weight_decay",
    ):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"self_mm.{name}: expected a finite value >= 0, got {value}")


# --- helpers: masks and pooling -----------------------------------------------------------------


# Copied from models.mmafnet.length_mask
def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


# Copied from models.mmafnet.masked_mean
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d); a length-0 row pools to zeros instead of NaN."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def _lengths(batch: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """``<name>_len`` clipped to [0, T]; all steps when the batch has no lengths."""
    x = batch[name]
    lengths = batch.get(f"{name}_len")
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    return lengths.long().clamp(0, x.shape[1])


def pool_text(x: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """F_t from frozen features: (B, T, d_t) -> (B, d_t), the masked mean ("mean") or the first
    token ("first", the reference's [CLS] read); a row with no valid token gives zeros."""
    if mode == "first":
        return x[:, 0] * (lengths > 0).to(x.dtype).unsqueeze(-1)
    return masked_mean(x, length_mask(lengths, x.shape[1]))


# --- the representations and the heads ------------------------------------------------------------


class AuViSubNet(nn.Module):
    """sLSTM: F_m = W h_last + b, with h_last the LSTM's final hidden state (last layer) over each
    row's valid frames, (B, T, d_m) -> (B, out). A row with no valid frame keeps the initial state,
    zeros."""

    def __init__(self, in_dim: int, hidden: int, out: int, layers: int, dropout: float) -> None:
        super().__init__()
        # nn.LSTM's dropout acts between layers only (and warns for one layer), as the reference's
        between = dropout if layers > 1 else 0.0
        self.rnn = nn.LSTM(in_dim, hidden, num_layers=layers, dropout=between, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # pack_padded_sequence needs lengths >= 1, on the CPU; length-0 rows are zeroed below
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.rnn(packed)  # h_n (layers, B, hidden), in the batch's order
        h = h_n[-1] * (lengths > 0).to(h_n.dtype).unsqueeze(-1)  # (B, hidden)
        return self.linear(self.drop(h))  # (B, out)


class Head(nn.Module):
    """A task's head: F* = ReLU(W1 dropout(x) + b1) (the representation the ULGM measures), then
    y_hat = W3 ReLU(W2 F* + b2) + b3. (B, d_in) -> (B, d), (B, out)."""

    def __init__(self, d_in: int, d: int, out: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.layer1 = nn.Linear(d_in, d)
        self.layer2 = nn.Linear(d, d)
        self.layer3 = nn.Linear(d, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.layer1(self.drop(x)))  # F*  (B, d)
        return f, self.layer3(torch.relu(self.layer2(f)))  # (B, d), (B, out)


# --- ULGM: the equations on plain tensors ---------------------------------------------------------


def class_centres(
    feats: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, exclude_zero: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """C_p, C_n: the means of ``feats`` (N, d) over the ``valid`` (N,) rows whose label is > 0
    (>= 0 without ``exclude_zero``) and < 0; None for a class with no row."""
    pos = valid & ((labels > 0) if exclude_zero else (labels >= 0))
    neg = valid & (labels < 0)
    c_pos = feats[pos].mean(0) if bool(pos.any()) else None  # (d,)
    c_neg = feats[neg].mean(0) if bool(neg.any()) else None
    return c_pos, c_neg


def relative_distance(
    f: torch.Tensor, c_pos: torch.Tensor, c_neg: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """alpha = (D_n - D_p) / (D_p + eps), with D the L2 distances of each row of ``f`` (B, d) to
    the centres (d,); (B,). Positive when nearer the positive centre."""
    d_p = torch.linalg.vector_norm(f - c_pos, dim=-1)  # (B,)
    d_n = torch.linalg.vector_norm(f - c_neg, dim=-1)
    return (d_n - d_p) / (d_p + eps)


def generate_labels(
    y_m: torch.Tensor,
    alpha_m: torch.Tensor,
    alpha_s: torch.Tensor,
    bound: float,
    eps: float = EPS,
) -> torch.Tensor:
    """y_s = (y_m alpha_s / alpha_m + y_m + alpha_s - alpha_m) / 2, clipped to [-bound, bound]:
    the mean of the ratio relation (y_s / y_m = alpha_s / alpha_m) and the shift relation
    (y_s - y_m = alpha_s - alpha_m); all (B,)."""
    y_s = 0.5 * y_m * alpha_s / (alpha_m + eps) + 0.5 * (y_m + alpha_s - alpha_m)
    return y_s.clamp(-bound, bound)


def momentum_update(y_prev: torch.Tensor, y_new: torch.Tensor, n: int) -> torch.Tensor:
    """y^(n) = (n - 1)/(n + 1) y^(n-1) + 2/(n + 1) y_new at the n-th epoch (1-based): an average
    over the epochs that weighs the later ones more; n = 1 gives y_new."""
    return (n - 1) / (n + 1) * y_prev + 2 / (n + 1) * y_new


def unimodal_loss(
    pred_s: torch.Tensor, y_s: torch.Tensor, y_m: torch.Tensor, weighted: bool = True
) -> torch.Tensor:
    """mean_i w_i |y_s_hat^i - y_s^i| with w_i = tanh(|y_s^i - y_m^i|) (``weighted``), else 1;
    a subtask learns most from the samples whose generated label departs most from y_m."""
    pred_s, y_s = pred_s.float().reshape(-1), y_s.float().reshape(-1)
    err = (pred_s - y_s).abs()
    if not weighted:
        return err.mean()
    return (torch.tanh((y_s - y_m.float().reshape(-1)).abs()) * err).mean()


# --- ULGM: the per-sample memory ------------------------------------------------------------------


class LabelMemory(nn.Module):
    """The ULGM's memory of the training split, one row per sample (``batch["index"]``): the last
    F_k* seen for k = m and each subtask, y_m, the generated y_s, and whether the row was seen.

    Persistent buffers, grown on first use to the largest index seen (the engine does not pass the
    split's size); ``_load_from_state_dict`` resizes them to a checkpoint's before loading.
    """

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.keys = tuple(dims)  # "m" first, then the subtasks
        for k, d in dims.items():
            self.register_buffer(f"feat_{k}", torch.zeros(0, d))
            self.register_buffer(f"label_{k}", torch.zeros(0))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    def names(self) -> list[str]:
        return [*(f"feat_{k}" for k in self.keys), *(f"label_{k}" for k in self.keys), "seen"]

    def size(self) -> int:
        return int(self.seen.shape[0])

    def feat(self, k: str) -> torch.Tensor:
        return getattr(self, f"feat_{k}")

    def label(self, k: str) -> torch.Tensor:
        return getattr(self, f"label_{k}")

    def _resize(self, name: str, rows: int, like: torch.Tensor | None = None) -> None:
        old = getattr(self, name)
        shape = (rows, *(old.shape[1:] if like is None else like.shape[1:]))
        new = torch.zeros(shape, dtype=old.dtype if like is None else like.dtype, device=old.device)
        if like is None:
            new[: old.shape[0]] = old
        self.register_buffer(name, new)  # replaces the buffer of that name

    def ensure_size(self, rows: int) -> None:
        if rows > self.size():
            for name in self.names():
                self._resize(name, rows)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        # a checkpoint's memory has the training split's size; a fresh model's has none yet
        for name in self.names():
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and saved.shape != getattr(self, name).shape:
                self._resize(name, saved.shape[0], like=saved)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def lookup(self, index: torch.Tensor, y_m: torch.Tensor, k: str) -> torch.Tensor:
        """The current y_k of rows ``index`` (B,); y_m for a row not seen yet (y_s^(1) = y_m)."""
        n = self.size()
        if n == 0:
            return y_m
        inside = index < n
        rows = index.clamp(max=n - 1)
        known = inside & self.seen[rows]
        return torch.where(known, self.label(k)[rows].to(y_m.dtype), y_m)

    @torch.no_grad()
    def update(
        self,
        index: torch.Tensor,
        y_m: torch.Tensor,
        feats: Mapping[str, torch.Tensor],
        epoch: int,
        cfg: SelfMMConfig,
    ) -> int:
        """One batch of the ULGM: update the labels of rows ``index`` (from ``cfg.start_epoch`` on,
        with the centres of the memory before this batch), then store the batch's F*. Returns the
        number of subtasks whose update was skipped for want of a class centre."""
        index = index.long()
        y_m = y_m.float()
        self.ensure_size(int(index.max()) + 1)
        new = ~self.seen[index]
        self.label("m")[index] = y_m
        subtasks = [k for k in self.keys if k != "m"]
        for s in subtasks:  # y_s^(1) = y_m (the reference's init_labels)
            self.label(s)[index] = torch.where(new, y_m, self.label(s)[index])
        skipped = 0
        if epoch >= cfg.start_epoch:
            skipped = self._update_labels(index, y_m, feats, epoch, cfg, subtasks)
        for k in self.keys:
            self.feat(k)[index] = feats[k].detach().float()
        self.seen[index] = True
        return skipped

    def _update_labels(
        self,
        index: torch.Tensor,
        y_m: torch.Tensor,
        feats: Mapping[str, torch.Tensor],
        epoch: int,
        cfg: SelfMMConfig,
        subtasks: list[str],
    ) -> int:
        centres = {
            k: class_centres(self.feat(k), self.label(k), self.seen, cfg.exclude_zero)
            for k in self.keys
        }
        c_pos, c_neg = centres["m"]
        if c_pos is None or c_neg is None:
            return len(subtasks)
        alpha_m = relative_distance(feats["m"].float(), c_pos, c_neg)  # (B,)
        skipped = 0
        for s in subtasks:
            s_pos, s_neg = centres[s]
            if s_pos is None or s_neg is None:
                skipped += 1
                continue
            alpha_s = relative_distance(feats[s].float(), s_pos, s_neg)  # (B,)
            y_new = generate_labels(y_m, alpha_m, alpha_s, cfg.label_bound)
            prev = self.label(s)[index]
            y_next = momentum_update(prev, y_new, epoch + 1)  # n = the 1-based epoch
            self.label(s)[index] = torch.where(torch.isfinite(y_next), y_next, prev)
        return skipped

    def summary(self) -> dict[str, float]:
        """Per subtask, over the seen rows: mean |y_s - y_m|, mean weight tanh|y_s - y_m|, and the
        share of non-zero y_m whose generated label has the other sign."""
        out: dict[str, float] = {}
        if self.size() == 0 or not bool(self.seen.any()):
            return out
        y_m = self.label("m")[self.seen]
        for s in (k for k in self.keys if k != "m"):
            y_s = self.label(s)[self.seen]
            gap = (y_s - y_m).abs()
            out[f"ulgm/gap_{s}"] = float(gap.mean())
            out[f"ulgm/weight_{s}"] = float(torch.tanh(gap).mean())
            signed = y_m != 0
            flips = (torch.sign(y_s) != torch.sign(y_m)) & signed
            out[f"ulgm/flip_{s}"] = float(flips.sum()) / max(int(signed.sum()), 1)
        return out


# --- the model ------------------------------------------------------------------------------------


class SelfMM(MSAModel):
    """Representations -> multimodal head (the prediction) and unimodal heads; ULGM labels."""

    def __init__(self, cfg: SelfMMConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.classify = cfg.head == "classification"
        out = cfg.num_classes if self.classify else 1
        self.mods = tuple(SHORT[m] for m in MODALITIES if getattr(cfg, f"{m}_dim") > 0)
        if not self.mods:
            raise ConfigError("self_mm: every *_dim is 0; the dataset has no features")
        rep = {
            "t": cfg.text_dim,
            "a": cfg.audio_out,
            "v": cfg.vision_out,
        }  # widths of F_t, F_a, F_v
        post = {"t": cfg.post_text_dim, "a": cfg.post_audio_dim, "v": cfg.post_vision_dim}
        drop = {
            "t": cfg.post_text_dropout,
            "a": cfg.post_audio_dropout,
            "v": cfg.post_vision_dropout,
        }
        self.subnets = nn.ModuleDict()
        if "a" in self.mods:
            self.subnets["a"] = AuViSubNet(
                cfg.audio_dim,
                cfg.audio_hidden,
                cfg.audio_out,
                cfg.audio_lstm_layers,
                cfg.audio_lstm_dropout,
            )
        if "v" in self.mods:
            self.subnets["v"] = AuViSubNet(
                cfg.vision_dim,
                cfg.vision_hidden,
                cfg.vision_out,
                cfg.vision_lstm_layers,
                cfg.vision_lstm_dropout,
            )
        d_fusion = sum(rep[m] for m in self.mods)
        self.fusion = Head(d_fusion, cfg.post_fusion_dim, out, cfg.post_fusion_dropout)
        self.heads = nn.ModuleDict({m: Head(rep[m], post[m], out, drop[m]) for m in self.mods})
        # every head is built in every variant (one seed, the same weights across the ablation);
        # the heads of subtasks not trained are frozen, so they count as no trainable parameters
        self.subtasks = tuple(m for m in self.mods if m in cfg.subtasks)
        for m in self.mods:
            if m not in self.subtasks:
                self.heads[m].requires_grad_(False)
        self.use_ulgm = cfg.ulgm and not self.classify and bool(self.subtasks)
        dims = {"m": cfg.post_fusion_dim, **{s: post[s] for s in self.subtasks}}
        self.memory = LabelMemory(dims) if self.use_ulgm else None
        self.skipped_steps = 0  # label updates skipped this epoch (no class centre yet)

    def own_optimizer(self) -> torch.optim.Optimizer | None:
        """The audio and vision subnets' Adam (the reference's groups); None if neither has one."""
        cfg = self.cfg
        groups = []
        for m, lr, wd in (
            ("a", cfg.audio_lr, cfg.audio_weight_decay),
            ("v", cfg.vision_lr, cfg.vision_weight_decay),
        ):
            if m in self.subnets and lr > 0:
                groups.append(
                    {"params": list(self.subnets[m].parameters()), "lr": lr, "weight_decay": wd}
                )
        return torch.optim.Adam(groups) if groups else None

    # -- forward ---------------------------------------------------------------------------------

    def represent(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """F_t, F_a, F_v: (B, d_t), (B, audio_out), (B, vision_out) for the modalities present."""
        missing = [m for m in MODALITIES if SHORT[m] in self.mods and m not in batch]
        if missing:
            raise ValueError(f"self_mm: the batch lacks {missing} (the config has their dims)")
        reps = {}
        for name in MODALITIES:
            m = SHORT[name]
            if m not in self.mods:
                continue
            lengths = _lengths(batch, name)
            if m == "t":
                reps[m] = pool_text(batch[name], lengths, self.cfg.text_pool)
            else:
                reps[m] = self.subnets[m](batch[name], lengths)
        return reps

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        reps = self.represent(batch)
        f_m, y_m = self.fusion(torch.cat([reps[m] for m in self.mods], dim=-1))  # (B, d_f), (B, o)
        extras = {"feat_m": f_m}
        for m in self.mods:
            f_s, y_s = self.heads[m](reps[m])  # F_s* (B, d_s), y_s_hat (B, o)
            extras[f"feat_{m}"] = f_s
            extras[f"pred_{m}"] = y_s if self.classify else y_s.squeeze(-1)
        return ModelOutput(pred=y_m if self.classify else y_m.squeeze(-1), extras=extras)

    # -- the objective -----------------------------------------------------------------------------

    def unimodal_labels(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each subtask's current generated labels for the batch's rows, (B,); y_m where ULGM is off
        or the row is new."""
        y_m = batch["label"].float()
        if self.memory is None:
            return dict.fromkeys(self.subtasks, y_m)
        index = _index(batch)
        return {s: self.memory.lookup(index, y_m, s) for s in self.subtasks}

    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        """L_m + unimodal_weight * sum_s L_s in training; L_m alone in eval mode (the reference's
        validation loss: only the multimodal head is evaluated)."""
        cfg = self.cfg
        l_m = task_loss(out.pred.float(), batch, cfg.head)
        parts = {"loss/task": l_m}
        total = l_m
        if self.training and self.subtasks:
            labels = self.unimodal_labels(batch) if not self.classify else {}
            l_uni = l_m.new_zeros(())
            for s in self.subtasks:
                pred_s = out.extras[f"pred_{s}"]
                if self.classify:
                    l_s = task_loss(pred_s.float(), batch, cfg.head)
                else:
                    l_s = unimodal_loss(pred_s, labels[s], batch["label"], self.use_ulgm)
                parts[f"loss/uni_{s}"] = l_s
                l_uni = l_uni + l_s
            total = l_m + cfg.unimodal_weight * l_uni
        parts["loss/total"] = total
        return total, {k: v.detach() for k, v in parts.items()}

    # -- ULGM: after the backward pass, before the step; the epoch's summary -----------------------

    def after_backward(
        self, out: ModelOutput, batch: dict[str, torch.Tensor], epoch: int
    ) -> dict[str, float]:
        """The ULGM's step for this batch (``LabelMemory.update``); no per-step trace."""
        if self.memory is None or not self.training:
            return {}
        feats = {k: out.extras[f"feat_{k}"] for k in self.memory.keys}
        self.skipped_steps += self.memory.update(
            _index(batch), batch["label"], feats, epoch, self.cfg
        )
        return {}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """The generated labels' departure from y_m, per subtask (``LabelMemory.summary``)."""
        if self.memory is None:
            return {}
        trace = self.memory.summary()
        if self.skipped_steps:
            trace["ulgm/skipped_steps"] = float(self.skipped_steps)
        self.skipped_steps = 0
        return trace


def _index(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if "index" not in batch:
        raise ValueError(
            "self_mm: ULGM needs batch['index'], each row's position in the training split "
            "(tasks.data.split_to_tensors adds it)"
        )
    return batch["index"].long()


# --- registry entry -------------------------------------------------------------------------------

_A = ACCUMULATION  # weight decays are divided by it (docstring: gradient accumulation)

# MMSA 2.2.1, config/config_regression.json, self_mm, datasetParams.mosi
MMSA_MOSI = {
    "audio_hidden": 16,
    "vision_hidden": 32,
    "audio_out": 16,
    "vision_out": 32,
    "audio_lstm_layers": 1,
    "vision_lstm_layers": 1,
    "audio_lstm_dropout": 0.0,
    "vision_lstm_dropout": 0.0,
    "post_fusion_dim": 128,
    "post_text_dim": 32,
    "post_audio_dim": 16,
    "post_vision_dim": 32,
    "post_fusion_dropout": 0.0,
    "post_text_dropout": 0.1,
    "post_audio_dropout": 0.1,
    "post_vision_dropout": 0.0,
    "label_bound": 3.0,
    "exclude_zero": True,
    "audio_lr": 5e-3,
    "vision_lr": 5e-3,
    "audio_weight_decay": 1e-3 / _A,
    "vision_weight_decay": 1e-3 / _A,
}
# ... datasetParams.mosei
MMSA_MOSEI = {
    **MMSA_MOSI,
    "post_fusion_dropout": 0.1,
    "post_text_dropout": 0.0,
    "post_audio_dropout": 0.0,
    "post_vision_dropout": 0.0,
    "vision_lr": 1e-4,
    "audio_weight_decay": 0.0,
    "vision_weight_decay": 0.0,
}
# thuiar/Self-MM (the authors' release), config/config_regression.py, mosi
AUTHORS_MOSI = {
    **MMSA_MOSI,
    "audio_hidden": 32,
    "vision_hidden": 64,
    "post_text_dim": 64,
    "post_fusion_dropout": 0.1,
    "post_text_dropout": 0.0,
    "post_audio_dropout": 0.1,
    "post_vision_dropout": 0.1,
    "exclude_zero": False,
    "audio_lr": 1e-3,
    "vision_lr": 1e-4,
    "audio_weight_decay": 1e-2 / _A,
    "vision_weight_decay": 1e-3 / _A,
}


def _train(batch: int, wd_other: float, epochs: int = 30) -> dict[str, Any]:
    """learning_rate_other / weight_decay_other with the accumulated batch (batch x 4)."""
    return {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": wd_other / _A,
        "batch_size": batch * _A,
        "epochs": epochs,
        "patience": 8,  # MMSA's early stop: 8 epochs without a better validation loss
    }


SPEC = ModelSpec(
    name="self_mm",
    config_cls=SelfMMConfig,
    model_cls=SelfMM,
    variants={
        "full": {},
        # the unimodal tasks supervised with the multimodal label, weight 1 (no ULGM)
        "no_ulgm": {"ulgm": False},
        # the multimodal task alone (the paper's "M" row of its subtask ablation)
        "m_only": {"subtasks": ""},
    },
    presets={
        "mmsa": {"model": dict(MMSA_MOSI), "train": _train(16, 1e-3)},
        "mmsa-mosei": {"model": dict(MMSA_MOSEI), "train": _train(32, 1e-2)},
        "paper": {"model": dict(AUTHORS_MOSI), "train": _train(32, 1e-3)},
        # smoke runs and tests: small widths; labels generated from the second epoch
        "quick": {
            "model": {
                "audio_hidden": 8,
                "vision_hidden": 8,
                "audio_out": 8,
                "vision_out": 8,
                "post_fusion_dim": 16,
                "post_text_dim": 8,
                "post_audio_dim": 8,
                "post_vision_dim": 8,
            },
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 4, "batch_size": 32},
        },
    },
    default_variant="full",
    # MMSA's config_tune.json ranges for self_mm
    search_space={
        "lr": ParamSpec(1e-4, 1e-3, log=True, target="train"),
        "audio_lr": ParamSpec(1e-4, 5e-3, log=True),
        "vision_lr": ParamSpec(1e-4, 5e-3, log=True),
        "post_fusion_dim": ParamSpec(64, 128, type="int"),
    },
    optional_space={
        "unimodal_weight": ParamSpec(0.1, 2.0, log=True),
        "post_fusion_dropout": ParamSpec(0.0, 0.1),
    },
    traces=(
        TraceFamily(
            name="ULGM",
            x="epoch",
            panels={
                "|y_s - y_m|": "ulgm/gap_{m}",
                "weight tanh|y_s - y_m|": "ulgm/weight_{m}",
                "sign flips": "ulgm/flip_{m}",
            },
            file="plots/ulgm_labels.png",
        ),
    ),
)
