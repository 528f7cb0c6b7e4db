"""TFN: Tensor Fusion Network (Zadeh, Chen, Poria, Cambria, Morency, "Tensor Fusion Network for
Multimodal Sentiment Analysis", EMNLP 2017).

The file reads like the paper's model section: config, the modality embedding subnetworks, the
tensor fusion layer, the sentiment inference subnetwork, then the model and its ``SPEC``.

- Modality embedding subnetworks. Audio and vision: the features averaged over each sample's valid
  frames, then ``SubNet`` (BatchNorm -> Dropout -> 3 x (Linear -> ReLU)), z_a (B, audio_hidden) and
  z_v (B, vision_hidden). Text: ``TextSubNet``, an LSTM over the valid words whose final hidden
  state goes through Dropout -> Linear, z_t (B, text_out).
- Tensor fusion layer: the 3-fold outer product of the 1-appended embeddings,
  Z = [1; z_a] (x) [1; z_v] (x) [1; z_t], (B, d_a+1, d_v+1, d_t+1), flattened. The appended 1s
  keep the unimodal terms (z_a, z_v, z_t), the bimodal ones (z_a (x) z_v, ...) and the trimodal
  one beside each other in one tensor (``tensor_fusion``). The 1 comes first, as in the
  reference, so index 0 of each axis is the constant.
- Sentiment inference subnetwork: Dropout -> Linear -> ReLU -> Linear -> ReLU -> Linear, to one
  score (regression) or ``num_classes`` logits. A regression score is bounded to
  (-output_bound, output_bound) by 2b * sigmoid(y) - b (the reference's 6 sigmoid(y) - 3 for
  sentiment in [-3, 3]); ``output_bound=0`` leaves it linear, which a target outside [-3, 3]
  needs (CMDC's PHQ-9: the model never sees the label range).
- Loss: the task loss alone (L1 for regression, cross-entropy for classes; ``task_loss``), as the
  reference's trainer.

Variants: the paper's subtensor ablation. ``fusion_terms`` keeps only some orders of Z (the rest
is zeroed, so the MLP sees the same layout): "notrimodal" (constant, unimodal and bimodal terms),
"bimodal" (the three z_m (x) z_n terms), "trimodal" (z_a (x) z_v (x) z_t only); "all" is TFN.

A modality with no features (``*_dim == 0``) contributes its appended 1 alone: Z then holds the
other two modalities' terms only (no subnet is built for it).

Parity with thuiar/MMSA 2.2.1 (PyPI mmsa==2.2.1, models/singleTask/TFN.py; its trainer
trains/singleTask/TFN.py; hyper-parameters config/config_regression.json, "tfn", MOSI)
---------------------------------------------------------------------------------------------
- Trainable parameters at the ``mmsa`` preset and MOSI's shapes (aligned, T=50, text 768,
  audio 5, vision 20, regression): reference 9,497,043 (no text encoder is fine-tuned, so nothing
  is excluded); ours 9,497,043. The reference has two more parameters, ``output_range`` (6) and
  ``output_shift`` (-3), with ``requires_grad=False`` (its optimiser also skips them with
  ``list(model.parameters())[2:]``); here the bound is the config field ``output_bound``.
- Outputs: the reference returns ``M`` (B, 1) and ``Feature_t/a/v/f``; ours ``pred`` (B,) (or
  (B, C) logits) and ``extras`` ``z_t``, ``z_a``, ``z_v``, ``fusion`` of the same shapes
  (``REFERENCE_OUTPUTS`` maps them). The flattened Z has the reference's layout (audio-major,
  text fastest) and the modules its names, so a reference state dict loads (strictly) once
  ``video_`` is renamed ``vision_`` and ``output_range``/``output_shift`` are dropped. Checked
  once outside the test suite (the tests must not need the reference): the reference's weights,
  loaded so, give the reference's outputs exactly, in eval mode at MOSI's shapes.
- Trainer: Adam, lr 1e-3, batch 32, no weight decay, no gradient clipping, no gradient
  accumulation, L1 loss: the ``mmsa`` preset. The reference trains until 8 epochs pass without a
  better valid loss (``early_stop``, no cap); the preset does the same (``patience`` 8) under a
  cap of 40 epochs and keeps the best valid epoch by valid MAE (the reference's ``KeyEval`` "Loss"
  is the valid L1 loss, the same criterion).
- Masking (differs, on purpose): the reference's data loader (``need_normalized``) averages audio
  and vision over all T=50 frames, padding included, and its LSTM reads all 50 steps, padding
  included, taking the state after step 50. Here the mean is over each sample's valid frames
  (``*_len``) and the LSTM is packed to the valid words, so padding never counts; a sample with
  no valid frame pools to zeros, and one with no word keeps the LSTM's initial state (zeros).
  Without lengths every step is real and the two agree exactly. A batch whose every length is T
  runs the padded LSTM on the rows in packing's order, bit for bit the packed result, without
  the packing (issue 18).
- Text dropout: the reference's config lists 0.3, but its ``TextSubNet`` sets dropout to 0 for a
  one-layer LSTM, so no text dropout ever applies; the ``mmsa`` preset says ``text_dropout=0.0``
  (the same behaviour). The field is applied to the LSTM's final state when set.
- Text input: the reference's MOSI text is its pickle's 768-d BERT features, read as they are (TFN
  fine-tunes no encoder); here the store's frozen text features, of ``text_dim``.
- Input scaling: the engine standardises each feature dimension on the train split
  (``train.standardize``) before the model; the reference only averages over time. Both then
  apply the subnets' BatchNorm.
- A training batch of one sample (the engine keeps the last partial batch) normalises with the
  BatchNorm running statistics instead of raising, as ``nn.BatchNorm1d`` does on one value.
- ``paper`` preset: the authors' own CMU-MOSI script, A2Zadeh/TensorFusionNetwork ``tf_mosi.py``
  (commit 47657e440658650fcd6ff4b9d9d1e4cbd3358422, "First submission"; unchanged at HEAD
  ca57f4f2409cfa8ab435f88404936dfc2894def2), read from the repository (the paper's text is not in
  this project). Audio and vision subnets 32 wide with input dropout 0.2, the text LSTM 128 wide
  into a linear 64 (no text dropout), dropout 0.2 on Z, two fusion layers of 160 (``--units``),
  and the score 8 sigmoid(y) - 4 (``output_bound=4``); trained with Keras' Adamax at lr 0.01 (the
  script's ``--optimizer adam`` maps to ``Adamax``), batch 128, no L2, early stopping after 5
  epochs without a better validation loss (the script's ``train_patience = 5``) under its cap of
  1000 epochs. Not carried over: its text input is trainable 300-d GloVe word embeddings over at
  most 20 words (here the store's frozen text features), FACET scaled by its train maximum (here
  ``train.standardize``), and its validation split taken from train + valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from msaflow.errors import ConfigError
from msaflow.models.base import InputSpec, ModelOutput, ModelSpec, MSAModel, Scalar, task_loss
from msaflow.models.spec import ParamSpec

FusionTerms = Literal["all", "notrimodal", "bimodal", "trimodal"]
# the orders of Z each variant keeps: 0 = the constant, 1 = unimodal, 2 = bimodal, 3 = trimodal
TERM_ORDERS: dict[str, frozenset[int]] = {
    "all": frozenset({0, 1, 2, 3}),
    "notrimodal": frozenset({0, 1, 2}),
    "bimodal": frozenset({2}),
    "trimodal": frozenset({3}),
}
# reference output key -> ours ("pred" is ModelOutput.pred, the rest are extras)
REFERENCE_OUTPUTS = {
    "M": "pred",
    "Feature_t": "z_t",
    "Feature_a": "z_a",
    "Feature_v": "z_v",
    "Feature_f": "fusion",
}


@dataclass
class TFNConfig(InputSpec):
    """TFN hyper-parameters; defaults are the reference's MOSI values (the ``mmsa`` preset)."""

    text_hidden: int = 128  # LSTM width
    text_out: int = 32  # d_t, size of z_t
    audio_hidden: int = 32  # d_a, size of z_a
    vision_hidden: int = 128  # d_v, size of z_v
    post_fusion_dim: int = 64  # width of the inference subnetwork's two hidden layers
    text_dropout: float = 0.0  # on the LSTM's final state (the reference's 0.3 never applies)
    audio_dropout: float = 0.3
    vision_dropout: float = 0.3
    post_fusion_dropout: float = 0.5  # on Z, before the inference subnetwork
    output_bound: float = 3.0  # regression: 2b sigmoid(y) - b; 0 = a linear score
    fusion_terms: FusionTerms = "all"  # the subtensor ablation


def validate_config(cfg: TFNConfig) -> None:
    """Raise ``ConfigError`` naming the field for values the model cannot be built with."""
    for name in ("text_hidden", "text_out", "audio_hidden", "vision_hidden", "post_fusion_dim"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"tfn.{name}: expected an integer >= 1, got {getattr(cfg, name)}")
    for name in ("text_dropout", "audio_dropout", "vision_dropout", "post_fusion_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(f"tfn.{name}: expected a value in [0, 1), got {getattr(cfg, name)}")
    if not cfg.output_bound >= 0.0:
        raise ConfigError(f"tfn.output_bound: expected a number >= 0, got {cfg.output_bound}")
    if cfg.fusion_terms not in TERM_ORDERS:
        raise ConfigError(
            f"tfn.fusion_terms: expected one of {sorted(TERM_ORDERS)}, got {cfg.fusion_terms!r}"
        )
    present = sum(getattr(cfg, f"{m}_dim") > 0 for m in ("text", "audio", "vision"))
    if present == 0:
        raise ConfigError("tfn: every *_dim is 0; the dataset has no features")
    if min(TERM_ORDERS[cfg.fusion_terms]) > present:  # every kept term would be empty
        raise ConfigError(
            f"tfn.fusion_terms: {cfg.fusion_terms!r} needs more modalities than the {present} "
            "with features"
        )
    if cfg.head == "classification" and cfg.num_classes < 2:
        raise ConfigError(f"tfn.num_classes: classification needs >= 2, got {cfg.num_classes}")


# --- masks and pooling ------------------------------------------------------------------------


# Copied from models.mmafnet.length_mask
def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


# Copied from models.mmafnet.masked_mean
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d); a length-0 row pools to zeros instead of NaN."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def time_average(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, d) -> (B, d): the mean over each sample's valid frames (all T without lengths)."""
    if lengths is None:
        return x.mean(dim=1)
    return masked_mean(x, length_mask(lengths, x.shape[1]))


# --- modality embedding subnetworks -----------------------------------------------------------


class SubNet(nn.Module):
    """Audio / visual embedding subnetwork on time-averaged features: (B, d_in) -> (B, hidden).

    BatchNorm -> Dropout -> 3 x (Linear -> ReLU), the reference's ``SubNet``."""

    def __init__(self, in_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_size)
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, hidden)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm; a training batch of one uses the running statistics (one value has no
        batch variance, and ``nn.BatchNorm1d`` would raise)."""
        if self.training and x.shape[0] == 1:
            n = self.norm
            return F.batch_norm(
                x, n.running_mean, n.running_var, n.weight, n.bias, training=False, eps=n.eps
            )
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.normalise(x))  # (B, d_in)
        h = F.relu(self.linear_1(h))
        h = F.relu(self.linear_2(h))
        return F.relu(self.linear_3(h))  # z_m, (B, hidden)


class TextSubNet(nn.Module):
    """Language embedding subnetwork: an LSTM over the valid words, its final hidden state ->
    Dropout -> Linear, (B, T, d_in) -> (B, out). A sample with no word keeps the initial state
    (zeros), so its z_t is the Linear's bias."""

    def __init__(self, in_size: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_size, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        T = x.shape[1]
        host = None if lengths is None else lengths.clamp(min=1, max=T).cpu()  # pack reads them
        if host is None:
            _, (h, _) = self.rnn(x)  # every step is real
            h = h[-1]  # (B, hidden)
        elif bool((host == T).all()):
            # every length is T: the padded LSTM instead of the packed one (issue 18), on the rows
            # in the order packing puts them (its torch.sort, which permutes ties), so the
            # gradients sum in the same order: bit for bit the packed result
            # (tests/models/test_tfn.py)
            order = torch.sort(host, descending=True)[1].to(x.device)
            _, (h, _) = self.rnn(x.index_select(0, order))
            h = h[-1].index_select(0, torch.argsort(order))  # (B, hidden), the batch's order
        else:
            packed = pack_padded_sequence(x, host, batch_first=True, enforce_sorted=False)
            _, (h, _) = self.rnn(packed)
            # a zero-length row was packed with one (padding) step; it has read nothing
            h = h[-1] * (lengths > 0).to(h.dtype).unsqueeze(-1)  # (B, hidden)
        return self.linear_1(self.dropout(h))  # z_t, (B, out)


# --- tensor fusion layer ----------------------------------------------------------------------


def append_one(z: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, d+1): [1; z], the constant first (index 0)."""
    return torch.cat([z.new_ones(z.shape[0], 1), z], dim=1)


def tensor_fusion(z_a: torch.Tensor, z_v: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """Z = [1; z_a] (x) [1; z_v] (x) [1; z_t], flattened: (B, (d_a+1)(d_v+1)(d_t+1)).

    Entry (i, j, k) is at i(d_v+1)(d_t+1) + j(d_t+1) + k: Z[0,0,0] = 1, Z[i,0,0] = z_a[i-1]
    (unimodal), Z[i,j,0] = z_a[i-1] z_v[j-1] (bimodal), Z[i,j,k] with all > 0 the trimodal
    product. A modality of size 0 leaves its axis of size 1 (its constant)."""
    a, v, t = append_one(z_a), append_one(z_v), append_one(z_t)
    # einsum("bi,bj,bk->bijk", a, v, t) as two broadcast products, (a_i v_j) t_k: the same
    # products in the same order, values and gradients bit for bit (tests/models/test_tfn.py),
    # without einsum's dispatch; its backward measured a little cheaper alone (issue 18, noisy)
    av = a[:, :, None] * v[:, None, :]  # (B, d_a+1, d_v+1)
    return (av[:, :, :, None] * t[:, None, None, :]).flatten(1)  # (B, N)


def term_mask(d_a: int, d_v: int, d_t: int, orders: frozenset[int]) -> torch.Tensor:
    """(N,) bool over the flattened Z: True where the entry's order (how many of its three
    indices are past the constant) is in ``orders``."""
    i = (torch.arange(d_a + 1) > 0).long()[:, None, None]
    j = (torch.arange(d_v + 1) > 0).long()[None, :, None]
    k = (torch.arange(d_t + 1) > 0).long()[None, None, :]
    order = (i + j + k).flatten()  # (N,), 0..3
    keep = torch.zeros_like(order, dtype=torch.bool)
    for o in orders:
        keep |= order == o
    return keep


# --- the model --------------------------------------------------------------------------------


class TFN(MSAModel):
    """Embedding subnetworks -> tensor fusion -> sentiment inference subnetwork."""

    def __init__(self, cfg: TFNConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.classify = cfg.head == "classification"
        # a modality without features gets no subnet and a z of size 0 (its [1] alone)
        self.d_t = cfg.text_out if cfg.text_dim > 0 else 0
        self.d_a = cfg.audio_hidden if cfg.audio_dim > 0 else 0
        self.d_v = cfg.vision_hidden if cfg.vision_dim > 0 else 0
        self.audio_subnet = (
            SubNet(cfg.audio_dim, cfg.audio_hidden, cfg.audio_dropout) if self.d_a else None
        )
        self.vision_subnet = (
            SubNet(cfg.vision_dim, cfg.vision_hidden, cfg.vision_dropout) if self.d_v else None
        )
        self.text_subnet = (
            TextSubNet(cfg.text_dim, cfg.text_hidden, cfg.text_out, cfg.text_dropout)
            if self.d_t
            else None
        )
        n = (self.d_a + 1) * (self.d_v + 1) * (self.d_t + 1)
        if cfg.fusion_terms != "all":  # derived from the config: no state-dict entry
            mask = term_mask(self.d_a, self.d_v, self.d_t, TERM_ORDERS[cfg.fusion_terms])
            self.register_buffer("term_mask", mask, persistent=False)
        else:
            self.term_mask = None
        out_dim = cfg.num_classes if self.classify else 1
        self.post_fusion_dropout = nn.Dropout(cfg.post_fusion_dropout)
        self.post_fusion_layer_1 = nn.Linear(n, cfg.post_fusion_dim)
        self.post_fusion_layer_2 = nn.Linear(cfg.post_fusion_dim, cfg.post_fusion_dim)
        self.post_fusion_layer_3 = nn.Linear(cfg.post_fusion_dim, out_dim)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The modality embeddings z_a (B, d_a), z_v (B, d_v), z_t (B, d_t)."""
        missing = [
            m
            for m, d in (("audio", self.d_a), ("vision", self.d_v), ("text", self.d_t))
            if d and m not in batch
        ]
        if missing:
            raise ValueError(f"tfn: the batch lacks {missing} (the config has dims for them)")
        ref = next(batch[m] for m in ("text", "audio", "vision") if m in batch)
        empty = ref.new_zeros(ref.shape[0], 0)
        z_a = (
            self.audio_subnet(time_average(batch["audio"], batch.get("audio_len")))
            if self.audio_subnet is not None
            else empty
        )
        z_v = (
            self.vision_subnet(time_average(batch["vision"], batch.get("vision_len")))
            if self.vision_subnet is not None
            else empty
        )
        z_t = (
            self.text_subnet(batch["text"], batch.get("text_len"))
            if self.text_subnet is not None
            else empty
        )
        return z_a, z_v, z_t

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        z_a, z_v, z_t = self.embed(batch)
        fusion = tensor_fusion(z_a, z_v, z_t)  # Z, (B, N)
        if self.term_mask is not None:
            fusion = fusion * self.term_mask.to(fusion.dtype)  # the subtensor ablation
        h = F.relu(self.post_fusion_layer_1(self.post_fusion_dropout(fusion)))
        h = F.relu(self.post_fusion_layer_2(h))
        y = self.post_fusion_layer_3(h)  # (B, 1) or (B, C)
        if not self.classify:
            y = y.squeeze(-1)  # (B,)
            b = self.cfg.output_bound
            if b > 0:
                y = 2 * b * torch.sigmoid(y) - b  # bounded to (-b, b)
        return ModelOutput(pred=y, extras={"z_t": z_t, "z_a": z_a, "z_v": z_v, "fusion": fusion})

    # Copied from models.unimodal.Unimodal.loss
    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        total = task_loss(out.pred, batch, self.cfg.head)
        value = total.detach()  # stays on the device (models.base: Scalar)
        return total, {"loss/task": value, "loss/total": value}


# MMSA 2.2.1, config_regression.json, "tfn" / MOSI. hidden_dims is (text, audio, video) there.
_MMSA_MOSI = {
    "text_hidden": 128,
    "text_out": 32,
    "audio_hidden": 32,
    "vision_hidden": 128,
    "post_fusion_dim": 64,
    "text_dropout": 0.0,  # listed as 0.3; never applied by the reference (module docstring)
    "audio_dropout": 0.3,
    "vision_dropout": 0.3,
    "post_fusion_dropout": 0.5,
    "output_bound": 3.0,
}
# Adam at 1e-3, batch 32, no weight decay; MMSA's early stop (8 epochs) under a cap of 40
_MMSA_TRAIN = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 40,
    "patience": 8,
}

# The authors' CMU-MOSI code: A2Zadeh/TensorFusionNetwork, tf_mosi.py (commit 47657e4, unchanged
# to HEAD ca57f4f). Subnets: BatchNorm -> Dropout(0.2) -> 3 x Dense(32, relu) for COVAREP (audio)
# and for FACET (vision); LSTM(128) -> Dense(64) for text; the fusion's Dropout(--dropout 0.2),
# 2 x Dense(--units 160, relu), then Dense(1, sigmoid) and a frozen Dense of 8 and -4: 8 s - 4.
_AUTHORS_MOSI = {
    "text_hidden": 128,
    "text_out": 64,
    "audio_hidden": 32,
    "vision_hidden": 32,
    "post_fusion_dim": 160,
    "text_dropout": 0.0,  # no dropout on the text branch
    "audio_dropout": 0.2,
    "vision_dropout": 0.2,
    "post_fusion_dropout": 0.2,
    "output_bound": 4.0,  # 8 sigmoid(y) - 4
}
# --optimizer adam, which that script maps to Keras' Adamax, at --lr 0.01; --l2 0; --batch 128;
# EarlyStopping on the validation loss with train_patience = 5 (the script's own, which overrides
# --train_patience), under its cap of 1000 epochs
_AUTHORS_TRAIN = {
    "optimizer": "adamax",
    "lr": 0.01,
    "weight_decay": 0.0,
    "batch_size": 128,
    "epochs": 1000,
    "patience": 5,
}

SPEC = ModelSpec(
    name="tfn",
    config_cls=TFNConfig,
    model_cls=TFN,
    # the paper's subtensor ablation
    variants={
        "full": {},
        "notrimodal": {"fusion_terms": "notrimodal"},
        "bimodal": {"fusion_terms": "bimodal"},
        "trimodal": {"fusion_terms": "trimodal"},
    },
    presets={
        "mmsa": {"model": dict(_MMSA_MOSI), "train": dict(_MMSA_TRAIN)},
        # the authors' CMU-MOSI script (module docstring: A2Zadeh/TensorFusionNetwork tf_mosi.py)
        "paper": {"model": dict(_AUTHORS_MOSI), "train": dict(_AUTHORS_TRAIN)},
        "quick": {
            "model": {
                "text_hidden": 16,
                "text_out": 8,
                "audio_hidden": 8,
                "vision_hidden": 8,
                "post_fusion_dim": 16,
                "post_fusion_dropout": 0.1,
            },
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 4, "batch_size": 32},
        },
    },
    default_variant="full",
    search_space={
        "post_fusion_dim": ParamSpec(16, 128, type="int"),
        "post_fusion_dropout": ParamSpec(0.0, 0.6),
        "text_out": ParamSpec(8, 64, type="int"),  # Z grows linearly with it
        "lr": ParamSpec(1e-4, 3e-3, log=True, target="train"),
    },
)
