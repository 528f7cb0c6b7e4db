"""MISA: Modality-Invariant and -Specific Representations (Hazarika, Zimmermann and Poria, "MISA:
Modality-Invariant and -Specific Representations for Multimodal Sentiment Analysis", ACM MM 2020,
arXiv:2005.03545).

The file reads like the paper's Section 3: config, then the utterance-level representations
(sLSTM), the invariant and specific subspaces, the reconstruction, the transformer fusion, the
three regularisers of the objective, the model and its ``SPEC``. The paper's text is not in
``shared/papers``; the blocks are named after its parts ("Modality Representation Learning",
"Modality Fusion", "Learning") rather than equation numbers.

Blocks
------
- ``SLSTM``: u_m = sLSTM(U_m; theta_m^lstm), (B, T, d_m) -> (B, 4 d_m). Two stacked bidirectional
  LSTMs of width d_m with a LayerNorm between them; u_m concatenates the final states of both
  layers in both directions. Audio and vision always; text only with ``text_pool="slstm"`` (the
  paper's GloVe setting).
- text: msaflow gives text as frozen features (B, T, d_t). ``text_pool="mean"`` (default) takes
  their mean over the valid tokens, what the paper's BERT setting and the reference do with BERT's
  last layer (``masked_mean``; a length-0 row pools to zeros).
- ``Projection``: u_m -> Linear(., d_h) -> ReLU -> LayerNorm, the common size d_h (``hidden``).
- ``Subspace``: E_c (shared by the three modalities) and E_p^m (one per modality), each
  Linear(d_h, d_h) + Sigmoid: h_m^c = E_c(u_m), h_m^p = E_p^m(u_m), (B, d_h).
- reconstruction: u_hat_m = D(h_m^c + h_m^p; theta^d), a Linear(d_h, d_h); ``decoder="shared"``
  (the paper's one theta^d) or ``"per_modality"`` (the reference's and the authors' code, one
  decoder per modality).
- ``Fusion``: the six vectors [h_t^p, h_v^p, h_a^p, h_t^c, h_v^c, h_a^c] as a length-6 sequence
  through a transformer encoder (``fusion_layers`` x ``nn.TransformerEncoderLayer``, post-norm,
  ReLU, no positional encoding), concatenated (B, 6 d_h), then the prediction head
  Linear(6 d_h, 3 d_h) -> Dropout -> ReLU -> Linear(3 d_h, 1 or C).
- objective: L = L_task + sim_weight L_sim + diff_weight L_diff + recon_weight L_recon (the paper's
  alpha, beta, gamma).

  - ``cmd`` / ``similarity_loss``: L_sim = 1/3 sum over (t,v), (t,a), (a,v) of CMD_K(h_m1^c,
    h_m2^c), K = ``cmd_moments`` = 5. CMD_K = ||E(X) - E(Y)|| + sum_{k=2..K} ||C_k(X) - C_k(Y)||
    (C_k the k-th central moment per dimension); the paper's 1/|b-a|^k factors are 1 for the
    sigmoid range [0, 1].
  - ``diff_loss`` / ``difference_loss``: L_diff = sum_m ||H_m^c^T H_m^p||_F^2 + sum over
    (a,t), (a,v), (t,v) of ||H_m1^p^T H_m2^p||_F^2, with H the batch matrices centred per
    dimension and row-normalised to unit l2 norm; as the reference, the squared entries are
    averaged (||.||_F^2 / (d_h d_h)), the scale the loss weights were tuned at.
  - ``reconstruction_loss``: L_recon = 1/3 sum_m ||u_m - u_hat_m||^2 / d_h, averaged over the batch
    (the reference's ``MSE``), with u_m the projected utterance vector.
  - L_task: ``task_loss`` (L1 for regression, as the rest of msaflow; ``task_loss="mse"`` for the
    paper's and the reference's MSE) and cross-entropy for classes.

Parity with thuiar/MMSA 2.2.1 (PyPI mmsa==2.2.1, models/singleTask/MISA.py, trainer
trains/singleTask/MISA.py)
--------------------------------------------------------------------------------------------
Trainable parameters at the ``mmsa`` preset and MOSI's MMSA shapes (aligned, T=50, text 768 /
audio 5 / vision 20, regression), counted on ``MMSA.models.singleTask.MISA.MISA`` built from
``config_regression.json`` (misa / mosi) with a bert-base-uncased-shaped ``BertModel``:

- the reference: 110,620,273, of which the fine-tuned BertTextEncoder is 109,482,240, so
  1,138,033 without BERT;
- of those, 3,588 never train: ``sp_discriminator`` (Linear(128, 4), 516: its outputs feed no loss
  term, so its parameters never get a gradient) and ``tlayer_norm`` (LayerNorm(1536), 3,072: the
  text sLSTM's norm, unused when text comes from BERT). Both are left out here;
- ours: 1,134,445 = 1,138,033 - 3,588 (``tests/models/test_misa.py`` asserts it). With the paper's
  shared decoder (the default and the ``paper`` preset) two Linear(128, 128) fewer: 1,101,421.
- outputs: the reference returns ``{"M": (B, 1)}`` and keeps the vectors the trainer's losses read
  as attributes (``utt_shared_t``, ``utt_private_t``, ``utt_t_orig``, ``utt_t_recon``, ... all
  (B, 128)); here ``pred`` is (B,) (the engine's regression shape; (B, C) logits for classes) and
  the same vectors are in ``extras`` as ``shared_t``, ``private_t``, ``orig_t``, ``recon_t``, ...
- numerics (checked once against the installed reference, not in the tests, which must not need
  MMSA): with the reference's non-BERT weights loaded into ours (a one-to-one renaming of the
  state dict) and BERT's output given as the text features, a MOSI-shaped batch with lengths
  50/17/3/1/33 gives the same predictions to 2e-7 and the same L_sim, L_diff and L_recon to 1e-6.

Differences from the reference, and why
---------------------------------------
- Text encoder: the reference fine-tunes BERT-base (``use_finetune=True``, in its one Adam group
  at lr 1e-4) and pools its last layer by the token mask; msaflow gives frozen text features by
  default (``train.text_encoder="frozen"``), pooled the same way (mean over valid tokens). The
  parity count excludes BERT, as issue 18 says. ``train.text_encoder="finetune"`` (the engine's
  wrapper, ``tasks/text_finetune.py``; this model is unchanged) fine-tunes an encoder on the
  store's raw text and feeds its last hidden states as the text features: the offline
  all-MiniLM-L6-v2 (6 layers, 384-d, 22.7M parameters) unless ``train.text_encoder_path`` names a
  local BERT checkpoint, in its own parameter group (``train.text_encoder_lr``, default 5e-5; set
  1e-4 for the reference's single rate), with up to ``train.text_max_tokens`` = 50 tokens as the
  reference. What still differs there: ``clip_value`` clips MISA's own gradients only (the
  reference clips BERT's too; ``train.grad_clip`` reaches the encoder).
- Task loss: the reference trains regression with MSE (``nn.MSELoss``), as do the authors' code
  and, as far as we know, the paper's task loss (its text is not in ``shared/papers`` to check).
  The field compares on MAE and the other msaflow models train with L1
  (``models.base.task_loss``), so the default is ``task_loss="l1"``; the ``mmsa`` and ``paper``
  presets set ``"mse"`` (set ``task_loss: l1`` with them to compare on msaflow's objective).
- Decoder: the paper reconstructs with one decoder D(.; theta^d), its parameters carrying no
  modality index (as we read the paper; issue 18's brief says the same); the reference (like the
  authors' code) has three. Default ``decoder="shared"``; the ``mmsa`` preset sets
  ``"per_modality"``.
- Dead parameters: ``sp_discriminator`` and ``tlayer_norm`` are not built (see above); the
  adversarial ``discriminator`` is not built in the reference either (``use_cmd_sim=True``).
- Sequence lengths: the reference packs audio and vision with the *text* mask's lengths (aligned
  data); here each modality uses its own ``<m>_len`` (equal on aligned data). A row with length 0
  is packed as length 1 and its u_m is zeroed (``pack_padded_sequence`` refuses length 0).
- CMD's gradient: the reference's ``matchnorm`` is ``sum(d**2) ** 0.5``, whose gradient is NaN
  where two moments coincide -- every batch of one (all central moments are 0) poisons the
  parameters with NaN. ``cmd`` (copied from ``models.mmafnet``) takes ``torch.linalg.vector_norm``:
  the same value everywhere, the same gradient wherever the reference's is finite, and 0 instead of
  NaN there. It also computes in fp32 under autocast and is 0 for an empty batch.
- Gradient clipping: the reference clips by value (``clip_grad_value_``, 0.8) after each backward;
  the engine's ``train.grad_clip`` clips the norm, so MISA clips by value itself in
  ``after_backward`` (``clip_value``; 0 = off), before the engine's step.
- Gradient accumulation: the reference steps every ``update_epochs=2`` batches of 16 (summed
  gradients; a last odd batch is dropped). The engine has no accumulation, so the ``mmsa`` preset
  steps every batch of 16 (under Adam, close to one step per 32 samples at the same rate, but twice
  the steps). An engine field would reproduce it (see the report of issue 18).
- Stopping and selection: the reference trains until 8 epochs without a better valid loss (MSE)
  and keeps that model; the ``mmsa`` preset stops the same way (``patience`` 8, under a cap of
  30 epochs) but keeps the best by the engine's selection metric (valid MAE for sentiment).
- Fusion order: the six vectors enter in the reference's order (private t, v, a, shared t, v, a);
  without positional encodings the transformer is permutation-equivariant, so another order only
  permutes the head's input columns.

The ``paper`` preset
--------------------
The paper's hyper-parameters for MOSI are taken from the authors' code (declare-lab/MISA,
``src/config.py`` at ec42fad, the one the paper links): Adam, lr 1e-4, batch 64, hidden 128,
dropout 0.5, diff_weight 0.3, sim_weight 1.0, recon_weight 1.0, value clipping at 1.0, orthogonal
init of the LSTMs' hidden-to-hidden weights (``orthogonal_hh``), MSE. Its learning-rate halving on
a plateau (reload of the best model, patience 6) is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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
from msaflow.models.spec import ParamSpec

MODS: tuple[str, ...] = tuple(SHORT[m] for m in MODALITIES)  # ("t", "a", "v")
SIM_PAIRS: tuple[tuple[str, str], ...] = (("t", "v"), ("t", "a"), ("a", "v"))  # L_sim
PRIVATE_PAIRS: tuple[tuple[str, str], ...] = (("a", "t"), ("a", "v"), ("t", "v"))  # L_diff
FUSION_ORDER: tuple[tuple[str, str], ...] = tuple(
    (kind, m) for kind in ("private", "shared") for m in ("t", "v", "a")
)


@dataclass
class MISAConfig(InputSpec):
    """MISA hyper-parameters; defaults are the paper's (the authors' MOSI code) except the task
    loss, L1 as the rest of msaflow (module docstring)."""

    hidden: int = 128  # d_h, the subspaces' size (hidden_size)
    dropout: float = 0.5  # the prediction head's dropout
    # objective: L_task + sim_weight L_sim + diff_weight L_diff + recon_weight L_recon
    sim_weight: float = 1.0  # alpha
    diff_weight: float = 0.3  # beta
    recon_weight: float = 1.0  # gamma
    cmd_moments: int = 5  # K of CMD_K
    diff_detach_norm: bool = True  # the reference's DiffLoss: the row norms get no gradient
    task_loss: Literal["l1", "mse"] = "l1"  # regression's L_task; the reference's is "mse"
    # architecture
    decoder: Literal["shared", "per_modality"] = "shared"  # the paper's D; the reference: 3
    text_pool: Literal["mean", "slstm"] = "mean"  # frozen text features: mean (BERT) or sLSTM
    fusion_heads: int = 2  # must divide hidden
    fusion_layers: int = 1
    fusion_ff: int = 2048  # nn.TransformerEncoderLayer's default, as the reference
    fusion_dropout: float = 0.1  # nn.TransformerEncoderLayer's default, as the reference
    orthogonal_hh: bool = False  # the authors' code: orthogonal init of the LSTMs' weight_hh
    # training
    clip_value: float = 1.0  # clip_grad_value_ in after_backward (0 = off); the reference: 0.8


_CHOICES = {
    "task_loss": ("l1", "mse"),
    "decoder": ("shared", "per_modality"),
    "text_pool": ("mean", "slstm"),
    "head": ("regression", "classification"),
}


def validate_config(cfg: MISAConfig) -> None:
    """Raise ``ConfigError`` naming the field for values the model cannot be built with."""
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"misa.{name}: expected one of {allowed}, got {getattr(cfg, name)!r}")
    for m in MODALITIES:
        if getattr(cfg, f"{m}_dim") < 1:
            raise ConfigError(
                f"misa.{m}_dim: MISA needs all three modalities, got {getattr(cfg, f'{m}_dim')}"
            )
    if cfg.fusion_heads < 1 or cfg.hidden < 1 or cfg.hidden % cfg.fusion_heads:
        raise ConfigError(
            f"misa.hidden: expected a positive multiple of fusion_heads={cfg.fusion_heads}, "
            f"got {cfg.hidden}"
        )
    for name in ("fusion_layers", "fusion_ff", "cmd_moments"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"misa.{name}: expected >= 1, got {getattr(cfg, name)}")
    for name in ("sim_weight", "diff_weight", "recon_weight", "clip_value"):
        value = getattr(cfg, name)
        if not (value >= 0 and value < float("inf")):
            raise ConfigError(f"misa.{name}: expected a finite value >= 0, got {value}")
    for name in ("dropout", "fusion_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(f"misa.{name}: expected a value in [0, 1), got {getattr(cfg, name)}")
    if cfg.head == "classification" and cfg.num_classes < 2:
        raise ConfigError(f"misa.num_classes: classification needs >= 2, got {cfg.num_classes}")


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


def lengths_of(batch: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
    """``batch["<m>_len"]`` clipped to [0, T], or all T when the batch has no lengths; (B,)."""
    x = batch[modality]
    B, T = x.shape[:2]
    lengths = batch.get(f"{modality}_len")
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=x.device)
    return lengths.to(device=x.device, dtype=torch.long).clamp(0, T)


# --- Modality representation learning -----------------------------------------------------------


class SLSTM(nn.Module):
    """u_m = sLSTM(U_m; theta_m^lstm): (B, T, d) -> (B, 4 h), two bidirectional LSTMs (width h,
    as the reference: h = d) with a LayerNorm between them, packed by the valid lengths.

    u_m = [final h of layer 1 fwd; layer 2 fwd; layer 1 bwd; layer 2 bwd], the reference's order.
    A row of length 0 is packed as length 1 (packing refuses 0) and its u_m set to zeros.
    """

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.rnn1 = nn.LSTM(d, h, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(2 * h)
        self.rnn2 = nn.LSTM(2 * h, h, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        packed_len = lengths.clamp(min=1).cpu()  # pack_padded_sequence wants CPU int64
        packed = pack_padded_sequence(x, packed_len, batch_first=True, enforce_sorted=False)
        out1, (h1, _) = self.rnn1(packed)  # h1 (2, B, h), in the batch's order
        pad1, _ = pad_packed_sequence(out1, batch_first=True)  # (B, T', 2h)
        normed = pack_padded_sequence(
            self.norm(pad1), packed_len, batch_first=True, enforce_sorted=False
        )
        _, (h2, _) = self.rnn2(normed)  # (2, B, h)
        u = torch.cat((h1, h2), dim=2).permute(1, 0, 2).reshape(B, -1)  # (B, 4h)
        return u * (lengths > 0).to(u.dtype).unsqueeze(-1)


class Projection(nn.Module):
    """u_m -> Linear(., d_h) -> ReLU -> LayerNorm: the common size, (B, d_in) -> (B, d_h)."""

    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d), nn.ReLU(), nn.LayerNorm(d))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)


class Subspace(nn.Module):
    """E_c or E_p^m: Linear(d_h, d_h) + Sigmoid, (B, d_h) -> (B, d_h), values in (0, 1)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)


# --- Modality fusion -----------------------------------------------------------------------------


class Fusion(nn.Module):
    """Transformer over the six vectors, their concatenation and the prediction head G:
    (B, 6, d_h) -> (B, out)."""

    def __init__(self, cfg: MISAConfig, out: int) -> None:
        super().__init__()
        d = cfg.hidden
        layer = nn.TransformerEncoderLayer(
            d, cfg.fusion_heads, cfg.fusion_ff, cfg.fusion_dropout, batch_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, cfg.fusion_layers, enable_nested_tensor=False
        )
        self.head = nn.Sequential(
            nn.Linear(6 * d, 3 * d), nn.Dropout(cfg.dropout), nn.ReLU(), nn.Linear(3 * d, out)
        )

    def forward(self, six: torch.Tensor) -> torch.Tensor:
        h = self.transformer(six)  # (B, 6, d_h), no mask: all six vectors are real
        return self.head(h.flatten(1))  # (B, 6 d_h) -> (B, out)


# --- Learning: the three regularisers ------------------------------------------------------------


# Copied from models.mmafnet._matchnorm
def _matchnorm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # vector_norm has a zero (not NaN) gradient at 0, so identical inputs stay trainable
    return torch.linalg.vector_norm(x - y)


# Copied from models.mmafnet.cmd
def cmd(x: torch.Tensor, y: torch.Tensor, k: int = 5) -> torch.Tensor:
    """eq. 2's CMD (Zellinger et al., MISA's form): ||E x - E y|| + sum_{j=2..k} ||c_j(x) -
    c_j(y)||.

    x (N, d), y (M, d): samples of two distributions; c_j is the j-th central moment per dimension.
    """
    x, y = x.float(), y.float()
    if x.shape[0] == 0 or y.shape[0] == 0:
        return x.new_zeros(())
    mx, my = x.mean(0), y.mean(0)  # (d,)
    sx, sy = x - mx, y - my
    total = _matchnorm(mx, my)
    for j in range(2, k + 1):
        total = total + _matchnorm(sx.pow(j).mean(0), sy.pow(j).mean(0))
    return total


def similarity_loss(shared: Mapping[str, torch.Tensor], k: int = 5) -> torch.Tensor:
    """L_sim = 1/3 [CMD_K(h_t^c, h_v^c) + CMD_K(h_t^c, h_a^c) + CMD_K(h_a^c, h_v^c)], scalar."""
    return sum(cmd(shared[m1], shared[m2], k) for m1, m2 in SIM_PAIRS) / len(SIM_PAIRS)


# Copied from models.mmafnet.diff_loss
def diff_loss(a: torch.Tensor, b: torch.Tensor, detach_norm: bool = False) -> torch.Tensor:
    """eq. 3's <a, b> (MISA's DiffLoss): mean((A^T B)^2) for batch-centred, row-normalised A, B.

    a (N, d1), b (N, d2), rows paired. 0 when the centred features are orthogonal.
    ``detach_norm`` as MISA's code: the row norms get no gradient (see ``diff_detach_norm``).
    """
    a, b = a.float().flatten(1), b.float().flatten(1)
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    if detach_norm:
        na, nb = na.detach(), nb.detach()
    a, b = a / (na + 1e-6), b / (nb + 1e-6)
    return (a.t() @ b).pow(2).mean()


def difference_loss(
    shared: Mapping[str, torch.Tensor],
    private: Mapping[str, torch.Tensor],
    detach_norm: bool = True,
) -> torch.Tensor:
    """L_diff = sum_m ||H_m^p^T H_m^c||^2 + sum over (a,t), (a,v), (t,v) of ||H_m1^p^T H_m2^p||^2
    (each ``diff_loss``: the mean of the squared entries), scalar."""
    intra = sum(diff_loss(private[m], shared[m], detach_norm) for m in ("t", "v", "a"))
    inter = sum(diff_loss(private[m1], private[m2], detach_norm) for m1, m2 in PRIVATE_PAIRS)
    return intra + inter


def reconstruction_loss(
    orig: Mapping[str, torch.Tensor], recon: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """L_recon = 1/3 sum_m ||u_m - u_hat_m||^2 / d_h, averaged over the batch: the mean of
    (B, d_h) squared errors per modality (the reference's ``MSE``), then over the three."""
    terms = [(orig[m].float() - recon[m].float()).pow(2).mean() for m in ("t", "v", "a")]
    return sum(terms) / len(terms)


# --- the model ----------------------------------------------------------------------------------


class MISA(MSAModel):
    """sLSTM / pooled text -> projection -> shared and private subspaces -> transformer fusion ->
    head; the losses read the subspace vectors from ``extras``."""

    def __init__(self, cfg: MISAConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        d = cfg.hidden
        dims = {"t": cfg.text_dim, "a": cfg.audio_dim, "v": cfg.vision_dim}
        # utterance-level representations: sLSTM for audio and vision, text pooled (or sLSTM)
        slstm = ("a", "v") if cfg.text_pool == "mean" else ("t", "a", "v")
        self.slstm = nn.ModuleDict({m: SLSTM(dims[m], dims[m]) for m in slstm})
        u_dim = {m: 4 * dims[m] if m in slstm else dims[m] for m in MODS}
        self.project = nn.ModuleDict({m: Projection(u_dim[m], d) for m in MODS})
        # invariant (one E_c for all) and specific (one E_p per modality) subspaces
        self.shared = Subspace(d)
        self.private = nn.ModuleDict({m: Subspace(d) for m in MODS})
        if cfg.decoder == "shared":
            self.decoder: nn.Module = nn.Linear(d, d)
        else:
            self.decoder = nn.ModuleDict({m: nn.Linear(d, d) for m in MODS})
        out = cfg.num_classes if cfg.head == "classification" else 1
        self.fusion = Fusion(cfg, out)
        if cfg.orthogonal_hh:
            for name, p in self.named_parameters():
                if "weight_hh" in name:
                    nn.init.orthogonal_(p)

    def decode(self, m: str, h: torch.Tensor) -> torch.Tensor:
        """u_hat_m = D(h_m^c + h_m^p): the shared decoder, or modality m's own."""
        if isinstance(self.decoder, nn.ModuleDict):
            return self.decoder[m](h)
        return self.decoder(h)

    def utterance(self, batch: Mapping[str, torch.Tensor], m: str) -> torch.Tensor:
        """u_m (B, d_u) for modality short name m."""
        name = {SHORT[k]: k for k in MODALITIES}[m]
        if name not in batch:
            raise ValueError(f"misa: the batch lacks {name!r} (MISA needs all three modalities)")
        x, lengths = batch[name], lengths_of(batch, name)
        if m in self.slstm:
            return self.slstm[m](x, lengths)
        return masked_mean(x, length_mask(lengths, x.shape[1]))  # frozen text: token mean

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        orig = {m: self.project[m](self.utterance(batch, m)) for m in MODS}  # (B, d_h)
        shared = {m: self.shared(orig[m]) for m in MODS}  # h_m^c
        private = {m: self.private[m](orig[m]) for m in MODS}  # h_m^p
        recon = {m: self.decode(m, shared[m] + private[m]) for m in MODS}  # u_hat_m
        vecs = {"private": private, "shared": shared}
        six = torch.stack([vecs[kind][m] for kind, m in FUSION_ORDER], dim=1)  # (B, 6, d_h)
        y = self.fusion(six)
        extras = {}
        for m in MODS:
            extras.update(
                {
                    f"shared_{m}": shared[m],
                    f"private_{m}": private[m],
                    f"orig_{m}": orig[m],
                    f"recon_{m}": recon[m],
                }
            )
        pred = y.squeeze(-1) if self.cfg.head == "regression" else y  # (B,) or (B, C)
        return ModelOutput(pred=pred, extras=extras)

    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        cfg, ex = self.cfg, out.extras
        shared = {m: ex[f"shared_{m}"] for m in MODS}
        private = {m: ex[f"private_{m}"] for m in MODS}
        if cfg.head == "regression" and cfg.task_loss == "mse":
            l_task = nn.functional.mse_loss(
                out.pred.float().reshape(-1), batch["label"].float().reshape(-1)
            )
        else:
            l_task = task_loss(out.pred, batch, cfg.head)
        l_sim = similarity_loss(shared, cfg.cmd_moments)
        l_diff = difference_loss(shared, private, cfg.diff_detach_norm)
        l_recon = reconstruction_loss(
            {m: ex[f"orig_{m}"] for m in MODS}, {m: ex[f"recon_{m}"] for m in MODS}
        )
        total = (
            l_task + cfg.sim_weight * l_sim + cfg.diff_weight * l_diff + cfg.recon_weight * l_recon
        )
        parts = {
            "loss/task": l_task.detach(),
            "loss/sim": l_sim.detach(),
            "loss/diff": l_diff.detach(),
            "loss/recon": l_recon.detach(),
            "loss/total": total.detach(),
        }
        return total, parts

    def after_backward(
        self, out: ModelOutput, batch: dict[str, torch.Tensor], epoch: int
    ) -> dict[str, float]:
        """The reference's ``clip_grad_value_`` (after backward, before the step)."""
        if self.cfg.clip_value > 0:
            params = [p for p in self.parameters() if p.grad is not None]
            nn.utils.clip_grad_value_(params, self.cfg.clip_value)
        return {}


# --- registry entry ------------------------------------------------------------------------------

# config_regression.json, "misa" / mosi (MMSA 2.2.1): hidden_size 128, dropout 0.2, diff_weight
# 0.1, sim_weight 0.3, recon_weight 1.0, grad_clip 0.8 (by value), batch 16, lr 1e-4, weight decay
# 0 (the trainer's Adam ignores it anyway), use_cmd_sim, lstm; MSE; three decoders.
_MMSA_MODEL = {
    "hidden": 128,
    "dropout": 0.2,
    "diff_weight": 0.1,
    "sim_weight": 0.3,
    "recon_weight": 1.0,
    "clip_value": 0.8,
    "decoder": "per_modality",
    "task_loss": "mse",
}
# declare-lab/MISA src/config.py (ec42fad), MOSI: the authors' code the paper links
_PAPER_MODEL = {
    "hidden": 128,
    "dropout": 0.5,
    "diff_weight": 0.3,
    "sim_weight": 1.0,
    "recon_weight": 1.0,
    "clip_value": 1.0,
    "decoder": "shared",
    "task_loss": "mse",
    "orthogonal_hh": True,
}

SPEC = ModelSpec(
    name="misa",
    config_cls=MISAConfig,
    model_cls=MISA,
    # the paper's ablation of the regularisers: each loss removed in turn
    variants={
        "full": {},
        "no_sim": {"sim_weight": 0.0},
        "no_diff": {"diff_weight": 0.0},
        "no_recon": {"recon_weight": 0.0},
    },
    presets={
        "mmsa": {
            "model": dict(_MMSA_MODEL),
            "train": {
                "optimizer": "adam",
                "lr": 1e-4,
                "batch_size": 16,
                "weight_decay": 0.0,
                "epochs": 30,
                "patience": 8,  # MMSA's early stop
            },
        },
        "paper": {
            "model": dict(_PAPER_MODEL),
            "train": {"optimizer": "adam", "lr": 1e-4, "batch_size": 64, "epochs": 30},
        },
        # smoke runs and tests: small widths, a few epochs at a faster rate
        "quick": {
            "model": {"hidden": 16, "fusion_ff": 32, "dropout": 0.1},
            "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 4},
        },
    },
    default_variant="full",
    search_space={
        "sim_weight": ParamSpec(0.01, 3.0, log=True),  # alpha
        "diff_weight": ParamSpec(0.01, 1.0, log=True),  # beta
        "recon_weight": ParamSpec(0.1, 3.0, log=True),  # gamma
        "dropout": ParamSpec(0.0, 0.6),
    },
    optional_space={"lr": ParamSpec(3e-5, 1e-3, log=True, target="train")},
)
