"""LMF: Low-rank Multimodal Fusion (Liu, Shen, Lakshminarasimhan, Liang, Zadeh, Morency,
"Efficient Low-rank Multimodal Fusion with Modality-Specific Factors", ACL 2018).

The file reads like the paper's method section: config, the unimodal subnetworks (TFN's), the
low-rank fusion with modality-specific factors, then the model and its ``SPEC``.

- Unimodal subnetworks, as TFN's (and the reference's, which shares them): audio and vision
  averaged over each sample's valid frames, then ``SubNet`` (BatchNorm -> Dropout ->
  3 x (Linear -> ReLU)), z_a (B, audio_hidden), z_v (B, vision_hidden); text through
  ``TextSubNet`` (an LSTM over the valid words, final state -> Dropout -> Linear), z_t
  (B, text_out).
- Tensor fusion as the starting point: with Z = [1; z_a] (x) [1; z_v] (x) [1; z_t] (TFN's tensor),
  a full-rank fusion is h = W . Z + b with W of shape (d_a+1, d_v+1, d_t+1, d_y).
- Low-rank fusion: W is a rank-r sum of outer products of modality-specific factors,
  W = sum_i lambda_i W_a^(i) (x) W_v^(i) (x) W_t^(i) (``full_rank_weight``), each factor
  W_m^(i) of shape (d_m+1, d_y). Contracting Z with it factor by factor never builds Z:
  h = sum_i lambda_i prod_m ([1; z_m] W_m^(i)) + b (``low_rank_fusion``; prod is elementwise over
  the d_y outputs). lambda (1, r) are the reference's per-rank ``fusion_weights`` (the paper sums
  the r terms with weight 1; a learnt lambda_i can be absorbed into any factor, so the function
  class is the paper's); b (1, d_y) is the paper's bias.
- h is the output: one score (regression, unbounded, as the reference) or ``num_classes``
  logits. Loss: the task loss alone (L1 / cross-entropy, ``task_loss``), as the reference.

A modality with no features (``*_dim == 0``) contributes its appended 1 alone (its factor is then
a per-rank constant, shape (r, 1, d_y)).

Parity with thuiar/MMSA 2.2.1 (PyPI mmsa==2.2.1, models/singleTask/LMF.py; its trainer
trains/singleTask/LMF.py; hyper-parameters config/config_regression.json, "lmf", MOSI)
---------------------------------------------------------------------------------------------
- Trainable parameters at the ``mmsa`` preset and MOSI's shapes (aligned, T=50, text 768,
  audio 5, vision 20, regression): the reference's model has 505,071 parameters with
  ``requires_grad`` (no text encoder is fine-tuned, so nothing is excluded); ours 505,071, all
  trained. The reference's optimiser trains 505,067 of them (next item).
- Fusion weights (issue 18; differs on purpose, following the paper): the reference's trainer
  builds Adam from ``list(model.parameters())[:3]`` (the factors, at ``factor_lr``) and
  ``[5:]`` (the subnetworks, at ``learning_rate``), so ``fusion_weights`` (1 x r = 3) and
  ``fusion_bias`` (1 x d_y = 1) are in no group and keep their initial values (xavier-normal
  lambda, b = 0) for the whole run. The authors' code (Justin1904/Low-rank-Multimodal-Fusion,
  train_mosi.py) sliced the same way until commit fac33580d682737f469d5db8533aaccd6d74147d
  (2020, "fix the bug of not optimizing fusion weights and biases"), which takes ``[3:]``. The
  paper's h = W . Z + b trains both, and so does this model: they are in the engine's optimiser
  like every other parameter.
  ``train_fusion_weights=False`` freezes them, to reproduce the reference's behaviour (then
  505,067 trainable).
- Learning rates: the reference has two groups, ``factor_lr`` and ``learning_rate``; for MOSI (and
  MOSEI) both are 1e-3, so the engine's one ``lr`` is the same. SIMS's differ (5e-4 / 2e-3): that
  would need an ``own_optimizer``, not provided. Its ``weight_decay`` (0.005 for MOSI) applies to
  every group, as the preset's does here (Adam's L2 term, not AdamW's).
- Trainer: Adam, lr 1e-3, weight decay 0.005, batch 64, no gradient clipping or accumulation, L1
  loss: the ``mmsa`` preset. The reference trains until 8 epochs pass without a better valid loss
  (``early_stop``, no cap); the preset does the same (``patience`` 8) under a cap of 40 epochs
  and keeps the best valid epoch by valid MAE (the reference's ``KeyEval`` "Loss" is the valid L1
  loss, the same criterion).
- Outputs: the reference returns ``M`` (B, d_y) and ``Feature_t/a/v/f``; ours ``pred`` (B,) (or
  (B, C) logits) and ``extras`` ``z_t``, ``z_a``, ``z_v`` of the same shapes and ``fusion``
  (B, r, d_y), the per-rank products, where the reference's ``Feature_f`` squeezes them to (B, r)
  for one output (``REFERENCE_OUTPUTS`` maps the keys). Parameter names and shapes are the
  reference's, so its state dict loads (strictly) once ``video_`` is renamed ``vision_``; checked
  once outside the test suite: its weights give its outputs to 4e-9, in eval mode at MOSI's
  shapes.
- Dropouts: the reference's config lists four (0.3 each for MOSI). Its fourth,
  ``post_fusion_dropout``, is built but never applied in ``forward``, so there is no such field
  here; its text dropout is set to 0 by ``TextSubNet`` for a one-layer LSTM, so the ``mmsa``
  preset says ``text_dropout=0.0`` (the same behaviour).
- ``text_out``: the reference derives it as ``text_hidden // 2``; here a field (64 in ``mmsa``).
- Masking (differs, on purpose), text input, input scaling and one-sample batches: as TFN's
  (``models/tfn.py``): audio and vision are averaged over the valid frames and the LSTM reads the
  valid words only, where the reference averages over all 50 frames and runs over all 50 steps,
  padding included; without lengths the two agree exactly.
- ``paper`` preset: repeats ``mmsa``, for want of a source. The paper's text is not in this
  project (``shared/papers`` holds MMAFNet and MMCL only), and the authors' repository
  (Justin1904/Low-rank-Multimodal-Fusion, HEAD ea4755124d19bddf7941695215e98f16fbb1fff9) does not
  give CMU-MOSI's values either: its ``hyperparams.txt`` ("hyper parameters for reproducing the
  results in the paper", added in e6e9586d59d0ba254165ab66fc6c51c40d7ac6d4) lists POM and IEMOCAP
  only, and ``train_mosi.py`` is a random search over a grid (audio / video hidden 4-16, text
  hidden 64-256, rank 1-16, batch 4-128, ...) that records no chosen setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.init import xavier_normal_
from torch.nn.utils.rnn import pack_padded_sequence

from msaflow.errors import ConfigError
from msaflow.models.base import InputSpec, ModelOutput, ModelSpec, MSAModel, Scalar, task_loss
from msaflow.models.spec import ParamSpec

# reference output key -> ours ("pred" is ModelOutput.pred, the rest are extras)
REFERENCE_OUTPUTS = {
    "M": "pred",
    "Feature_t": "z_t",
    "Feature_a": "z_a",
    "Feature_v": "z_v",
    "Feature_f": "fusion",
}


@dataclass
class LMFConfig(InputSpec):
    """LMF hyper-parameters; defaults are the reference's MOSI values (the ``mmsa`` preset)."""

    text_hidden: int = 128  # LSTM width
    text_out: int = 64  # d_t, size of z_t (the reference: text_hidden // 2)
    audio_hidden: int = 16  # d_a
    vision_hidden: int = 128  # d_v
    rank: int = 3  # r, the rank of W
    text_dropout: float = 0.0  # on the LSTM's final state (the reference's 0.3 never applies)
    audio_dropout: float = 0.3
    vision_dropout: float = 0.3
    train_fusion_weights: bool = True  # False: lambda and b frozen, as the reference's trainer


def validate_config(cfg: LMFConfig) -> None:
    """Raise ``ConfigError`` naming the field for values the model cannot be built with."""
    for name in ("text_hidden", "text_out", "audio_hidden", "vision_hidden", "rank"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"lmf.{name}: expected an integer >= 1, got {getattr(cfg, name)}")
    for name in ("text_dropout", "audio_dropout", "vision_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(f"lmf.{name}: expected a value in [0, 1), got {getattr(cfg, name)}")
    if not any(getattr(cfg, f"{m}_dim") > 0 for m in ("text", "audio", "vision")):
        raise ConfigError("lmf: every *_dim is 0; the dataset has no features")
    if cfg.head == "classification" and cfg.num_classes < 2:
        raise ConfigError(f"lmf.num_classes: classification needs >= 2, got {cfg.num_classes}")


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


# Copied from models.tfn.time_average
def time_average(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, d) -> (B, d): the mean over each sample's valid frames (all T without lengths)."""
    if lengths is None:
        return x.mean(dim=1)
    return masked_mean(x, length_mask(lengths, x.shape[1]))


# --- unimodal subnetworks (TFN's) -------------------------------------------------------------


# Copied from models.tfn.SubNet
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


# Copied from models.tfn.TextSubNet
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


# --- low-rank multimodal fusion ---------------------------------------------------------------


# Copied from models.tfn.append_one
def append_one(z: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, d+1): [1; z], the constant first (index 0)."""
    return torch.cat([z.new_ones(z.shape[0], 1), z], dim=1)


def rank_products(zs: list[torch.Tensor], factors: list[torch.Tensor]) -> torch.Tensor:
    """prod_m ([1; z_m] W_m^(i)) for every rank i: (B, d_m+1) and (r, d_m+1, d_y) per modality
    -> (B, r, d_y). ``zs`` already carry their appended 1."""
    out = None
    for z, w in zip(zs, factors, strict=True):
        p = torch.einsum("bd,rdo->bro", z, w)  # [1; z_m] W_m^(i), (B, r, d_y)
        out = p if out is None else out * p  # elementwise over the d_y outputs
    if out is None:
        raise ValueError("lmf: rank_products needs at least one modality")
    return out


def low_rank_fusion(
    zs: list[torch.Tensor],
    factors: list[torch.Tensor],
    weights: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = sum_i lambda_i prod_m ([1; z_m] W_m^(i)) + b, with ``weights`` lambda (1, r) and
    ``bias`` b (1, d_y): (h (B, d_y), the per-rank products (B, r, d_y))."""
    per_rank = rank_products(zs, factors)  # (B, r, d_y)
    h = torch.einsum("r,bro->bo", weights[0], per_rank) + bias  # (B, d_y)
    return h, per_rank


def full_rank_weight(factors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """The TFN weight tensor the factors stand for: W = sum_i lambda_i W_a^(i) (x) W_v^(i) (x)
    W_t^(i), (d_a+1, d_v+1, d_t+1, d_y) for three factors of shape (r, d_m+1, d_y); then
    h = W . Z + b with TFN's Z gives ``low_rank_fusion``'s h."""
    a, v, t = factors
    return torch.einsum("r,rio,rjo,rko->ijko", weights[0], a, v, t)


# --- the model --------------------------------------------------------------------------------


class LMF(MSAModel):
    """Unimodal subnetworks -> low-rank fusion with modality-specific factors -> h."""

    def __init__(self, cfg: LMFConfig) -> None:
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
        d_y = cfg.num_classes if self.classify else 1
        r = cfg.rank
        # W_m^(i), (r, d_m+1, d_y); lambda (1, r); b (1, d_y): the reference's shapes and init
        self.audio_factor = nn.Parameter(torch.empty(r, self.d_a + 1, d_y))
        self.vision_factor = nn.Parameter(torch.empty(r, self.d_v + 1, d_y))
        self.text_factor = nn.Parameter(torch.empty(r, self.d_t + 1, d_y))
        self.fusion_weights = nn.Parameter(torch.empty(1, r))
        self.fusion_bias = nn.Parameter(torch.zeros(1, d_y))
        for p in (self.audio_factor, self.vision_factor, self.text_factor, self.fusion_weights):
            xavier_normal_(p)
        if not cfg.train_fusion_weights:  # the reference's trainer leaves them out
            self.fusion_weights.requires_grad_(False)
            self.fusion_bias.requires_grad_(False)

    # Copied from models.tfn.TFN.embed with tfn->lmf
    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The modality embeddings z_a (B, d_a), z_v (B, d_v), z_t (B, d_t)."""
        missing = [
            m
            for m, d in (("audio", self.d_a), ("vision", self.d_v), ("text", self.d_t))
            if d and m not in batch
        ]
        if missing:
            raise ValueError(f"lmf: the batch lacks {missing} (the config has dims for them)")
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
        zs = [append_one(z_a), append_one(z_v), append_one(z_t)]  # (B, d_m+1)
        factors = [self.audio_factor, self.vision_factor, self.text_factor]
        h, per_rank = low_rank_fusion(zs, factors, self.fusion_weights, self.fusion_bias)
        pred = h if self.classify else h.squeeze(-1)  # (B, C) or (B,)
        return ModelOutput(
            pred=pred, extras={"z_t": z_t, "z_a": z_a, "z_v": z_v, "fusion": per_rank}
        )

    # Copied from models.unimodal.Unimodal.loss
    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        total = task_loss(out.pred, batch, self.cfg.head)
        value = total.detach()  # stays on the device (models.base: Scalar)
        return total, {"loss/task": value, "loss/total": value}


# MMSA 2.2.1, config_regression.json, "lmf" / MOSI. hidden_dims is (text, audio, video) there.
_MMSA_MOSI = {
    "text_hidden": 128,
    "text_out": 64,  # text_hidden // 2
    "audio_hidden": 16,
    "vision_hidden": 128,
    "rank": 3,
    "text_dropout": 0.0,  # listed as 0.3; never applied by the reference (module docstring)
    "audio_dropout": 0.3,
    "vision_dropout": 0.3,
}
# Adam, learning_rate = factor_lr = 1e-3, weight decay 0.005, batch 64; MMSA's early stop (8
# epochs) under a cap of 40 (module docstring)
_MMSA_TRAIN = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.005,
    "batch_size": 64,
    "epochs": 40,  # MMSA has no cap; it stops 8 epochs after its best validation loss
    "patience": 8,
}

SPEC = ModelSpec(
    name="lmf",
    config_cls=LMFConfig,
    model_cls=LMF,
    variants={"full": {}},
    presets={
        "mmsa": {"model": dict(_MMSA_MOSI), "train": dict(_MMSA_TRAIN)},
        # no CMU-MOSI setting in the paper's text here or the authors' repository (module
        # docstring): the reference's values
        "paper": {"model": dict(_MMSA_MOSI), "train": dict(_MMSA_TRAIN)},
        "quick": {
            "model": {
                "text_hidden": 16,
                "text_out": 8,
                "audio_hidden": 8,
                "vision_hidden": 8,
                "rank": 2,
            },
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 4, "batch_size": 32},
        },
    },
    default_variant="full",
    search_space={
        "rank": ParamSpec(1, 16, type="int"),  # the paper's rank study
        "lr": ParamSpec(3e-4, 3e-3, log=True, target="train"),
        "weight_decay": ParamSpec(0.0, 0.01, target="train"),
    },
)
