"""MulT: the Multimodal Transformer (Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov, "Multimodal
Transformer for Unaligned Multimodal Language Sequences", ACL 2019), Section 3.

The file reads like Section 3: config, the crossmodal attention (eqs. 1-2), the crossmodal
transformer built from it (eq. 4), the temporal convolutions and positional embedding (eq. 3), then
the model (the six crossmodal transformers, the self-attention transformers over eq. 5's
concatenations, the last elements and the prediction head) and its ``SPEC``.

Blocks
------
- eq. 3, temporal convolutions: ``Conv1d(d_m, d, k_m)`` without bias per modality, (B, T_m, d_m) ->
  (B, T_m, d); text first goes through ``text_dropout``. Then Z^[0] = sqrt(d) X + PE(T_m, d) (the
  sinusoidal positional embedding, no parameters) and ``embed_dropout``.
- eqs. 1-2, crossmodal attention CM_{beta->alpha}: queries from the target alpha, keys and values
  from the source beta, softmax(Q_alpha K_beta^T / sqrt(d_k)) V_beta per head, then an output
  projection; the output has the target's length T_alpha. ``MultiheadCrossAttention`` with
  in_proj (3d x d, + bias) and out_proj (d x d, + bias), the reference's layout.
- eq. 4, crossmodal transformer beta->alpha: ``layers`` blocks, each LN -> CM (the target and the
  source normalised by the same LayerNorm) -> dropout -> residual, then LN -> Linear(d, 4d) -> ReLU
  -> Linear(4d, d) -> dropout -> residual; a final LayerNorm. The source enters every block at its
  layer-0 features (Z_beta^[0]), as the paper.
- eq. 5 and Section 3.3: per target alpha, Z_alpha = [Z_{beta1->alpha}; Z_{beta2->alpha}],
  (B, T_alpha, 2d), through a self-attention transformer (the same block, width 2d, source =
  itself) of ``self_layers`` blocks; its last element (``pool="last"``: the last *valid* step of
  each row) is alpha's feature, (B, 2d). The three are concatenated, (B, 6d), and go through the
  residual head h + Linear(ReLU(Linear(h)) -> dropout), then Linear to one score (regression) or
  ``num_classes`` logits (classification).
- Loss: the task loss alone (L1 / cross-entropy, ``models.base.task_loss``), as the reference.

Masks. Lengths come from ``batch["<m>_len"]`` (all steps real without them). Padded steps are zeroed
before the convolution (so a "same" convolution never reads them), get zero attention weight as
keys (crossmodal and self-attention), and are skipped by the pooling. A row whose source modality
has no valid step gets a zero attention output from that source (no NaN); a row whose target has
none pools to zeros. A modality whose lengths are all full (on the CPU) is not masked at all,
bit for bit the all-True mask's result without its work (``MulT.encode``). Aligned and unaligned
data are the same code path: each modality keeps its own
T (the crossmodal output has the target's length), and T=1 works ("same" padding).

Where the paper is ambiguous (each a config field)
--------------------------------------------------
- ``causal_mask`` (default False): the paper applies no mask (an utterance-level prediction, every
  step may attend to every step); True reproduces the reference's future mask (below).
- ``pool``: "the last elements of the sequence models" (Section 3.3): "last" (default) takes each
  row's last valid step; "mean" the masked time mean.
- ``ln_residual`` (default False): eq. 4 as printed adds LN(Z^[i-1]) (the normalised input) as the
  residual of each sublayer; the authors' code, and MMSA's copy of it, add Z^[i-1], a standard
  pre-LN transformer. False follows that code (what the reported numbers were trained with); True
  is the equation as printed. No parameter changes.
- ``targets``: which target modalities get a branch, "tav" (default) is MulT; "t" is the paper's
  Table 3 ablation [V, A -> L] (the head then sees (B, 2d)).
- The positional embedding is the authors' (fairseq's) sinusoid: positions 1..T, the first d/2
  channels sin(p w_j), the next d/2 cos(p w_j), w_j = 10000^(-j / (d/2 - 1)), a zero channel for
  odd d (the paper's appendix writes the interleaved form of Vaswani et al.; the two differ by a
  channel permutation and the frequency spacing).

Parity with thuiar/MMSA 2.2.1 (PyPI mmsa==2.2.1, models/singleTask/MULT.py)
--------------------------------------------------------------------------
Compared against MMSA 2.2.1 as installed from PyPI (``mmsa==2.2.1``): the model in
``models/singleTask/MULT.py`` with ``models/subNets/transformers_encoder/{transformer,
multihead_attention,position_embedding}.py``, the trainer in ``trains/singleTask/MULT.py``, the
hyper-parameters in ``config/config_regression.json`` ("mult", "mosi").

- Trainable parameters at the ``mmsa`` preset with MOSI's MMSA shapes (aligned, T=50, text 768 /
  audio 5 / vision 20, regression): reference 2,571,551, ours 2,571,551 (4-class classification:
  2,572,454 both). MMSA's MulT config has ``use_bert: false``, so it holds no BERT and nothing is
  excluded. Per part: the convolutions 192,000 / 1,250 / 5,000; each of the six crossmodal
  transformers 122,700 (4 blocks of 30,650 + the final LayerNorm's 100); each self-attention
  transformer (width 100) 485,400; the head 90,300 + 90,300 + 301.
- Numerically: checked once against the installed package (a throwaway script; the tests must
  not need MMSA). With the reference's state dict loaded (keys renamed), ``causal_mask=True``,
  ``position_embedding=False``, ``conv_padding="valid"``, no lengths and eval mode, ours gives the
  reference's outputs to within 1.2e-6 (max abs difference over ``pred`` and the four features) at
  MOSI's shapes; with positional embeddings inserted into the reference's encoders, likewise, on
  aligned and on unaligned (T = 20 / 40 / 30) inputs.
- Outputs: the reference returns {"M": (B, 1), "Feature_t"/"Feature_a"/"Feature_v": (B, 2d),
  "Feature_f": (B, 6d)}; ours ``pred`` (B,) (the squeezed "M"; (B, C) logits for classification)
  and ``extras`` {"feature_t", "feature_a", "feature_v": (B, 2d), "feature_f": (B, 6d)}.

Differences from the reference, and why:

1. Causal mask. MMSA sets ``attn_mask: true`` for MulT (commonParams), so every attention layer,
   crossmodal and self, adds ``buffered_future_mask``: query i may attend to key j only when
   j <= i + |T_k - T_q| (for aligned data the usual lower triangle; for unaligned pairs every
   query sees |T_k - T_q| steps ahead). The paper has no such mask; issue 18 says to follow the
   paper: ``causal_mask=False`` by default and in every preset (``mmsa`` included), and True
   applies exactly the reference's rule (variant "causal"). The reference's forward as MMSA runs it
   is ``causal_mask=True, position_embedding=False, conv_padding="valid"`` without lengths.
2. Positional embedding. MMSA's ``TransformerEncoder`` defaults to ``position_embedding=False``
   and ``MULT.get_network`` never sets it, so MMSA's MulT has none. The paper (Section 3.2) and the
   authors' code add one: ``position_embedding=True`` by default (no parameters; False is MMSA).
   fairseq also gives a zero embedding to any step whose first feature is exactly 0 (its padding
   test); here padding is the masks' job and every step gets its position.
3. Convolution padding. The reference's convolutions have ``padding=0``: T shrinks by k-1 (50 ->
   46 at k=5) and a sequence shorter than k (utterance-level features, T=1) crashes. Eq. 3 keeps
   the length (X_hat in R^{T x d}): ``conv_padding="same"`` by default; "valid" is the reference's
   (lengths then shrink by k-1 too).
4. Padding. The reference uses no key padding mask and no lengths: padded steps are attended to,
   and its feature is ``h[-1]``, the last *padded* step of each row. Ours masks them (see Masks)
   and takes the last valid step.
5. The reference skips a modality's convolution when its feature size already equals d; eq. 3 has
   it always, so does this file (no difference at MOSI's shapes, d=50 vs 768/5/20).
6. Attention dropout is chosen by the source modality in the reference (``get_network("la")``,
   target text with source audio, uses ``attn_dropout_a``), and the self-attention transformers
   use the text value ``attn_dropout``. Here: ``attn_dropout_t``/``_a``/``_v`` by source, as the
   reference, and a separate ``attn_dropout_self`` (0.3 = the reference's value in the preset).
7. Trainer (``trains/singleTask/MULT.py``): Adam at lr 2e-3 on all parameters, L1 loss (CE for
   classes), gradients clipped by *value* to 0.6 (``clip_grad_value_``) after every backward,
   gradient accumulation over ``update_epochs=8`` batches of 16 (losses summed, one step per 8
   batches; an epoch's last incomplete group never steps), ``ReduceLROnPlateau`` (factor 0.1,
   patience 5) on the validation loss, early stopping after 8 epochs without improvement and no
   epoch cap. Here:

   - the value clipping is the model's own: ``grad_clip_value`` (0.6 in the ``mmsa`` preset) clips
     in ``after_backward``, before the engine's optional norm clipping (``train.grad_clip``, off in
     that preset);
   - the config's ``weight_decay: 0.005`` is never passed to the reference's optimiser, so the
     ``mmsa`` preset trains with weight decay 0, as the reference does;
   - TrainConfig has no gradient accumulation: the ``mmsa`` preset steps after every batch of 16
     (8x the reference's steps at 1/8 of its effective batch); the ``mmsa-accum`` preset uses one
     batch of 128 per step instead, the reference's effective batch (Adam is nearly invariant to
     the sum-vs-mean loss scale; the value clip then acts on a mean gradient, not on a sum of
     eight);
   - no learning-rate schedule; the reference's early stop (8 epochs without a better valid
     loss) is ``patience`` 8, under a cap of 30 epochs, keeping the best-validation checkpoint.
8. The reference's ``easydict`` args become one config dataclass; its ``dst_feature_dim_nheads``
   is ``hidden``/``heads``, ``nlevels`` is ``layers``, and the self-attention depth, hard-coded
   there as max(nlevels, 3), is ``self_layers`` (4 in the presets).

Presets: ``mmsa`` is config_regression.json's MOSI entry (above); ``paper`` is the paper's Table 5
for CMU-MOSI (d=40, 4 blocks, 10 heads, kernels 3/3/3 -- "1 or 3" for text, 3 here --, textual
dropout 0.2, crossmodal attention dropout 0.2, output dropout 0.1, Adam lr 1e-3, batch 128, 100
epochs, gradient norm clip 0.8 as the authors' code); values it does not state keep the ``mmsa``
ones. ``quick`` is a tiny model for tests and smoke runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass
class MulTConfig(InputSpec):
    """MulT hyper-parameters; defaults are MMSA's MOSI values (config_regression.json)."""

    hidden: int = 50  # d, every crossmodal transformer's width (dst_feature_dim)
    heads: int = 10  # attention heads; must divide hidden
    layers: int = 4  # D, blocks per crossmodal transformer (nlevels)
    self_layers: int = 4  # blocks per self-attention transformer (reference: max(nlevels, 3))
    conv_kernel_t: int = 5  # eq. 3 kernel sizes k_L, k_A, k_V
    conv_kernel_a: int = 5
    conv_kernel_v: int = 5
    conv_padding: Literal["same", "valid"] = "same"  # "valid": the reference (T shrinks by k-1)
    text_dropout: float = 0.5  # on the text features, before the convolution
    embed_dropout: float = 0.2  # on Z^[0] (target and source) at each transformer's input
    attn_dropout_t: float = 0.3  # attention weights of crossmodal transformers whose source is t
    attn_dropout_a: float = 0.2  # ... source audio
    attn_dropout_v: float = 0.0  # ... source vision
    attn_dropout_self: float = 0.3  # attention weights of the self-attention transformers
    relu_dropout: float = 0.0  # inside the feed-forward sublayer, after the ReLU
    res_dropout: float = 0.0  # on each sublayer's output, before the residual sum
    output_dropout: float = 0.5  # inside the residual head
    causal_mask: bool = False  # True: the reference's future mask in every attention layer
    position_embedding: bool = True  # False: MMSA (no positional embedding)
    ln_residual: bool = False  # True: eq. 4 as printed (residual LN(Z)); False: the authors' code
    pool: Literal["last", "mean"] = "last"  # the last valid step, or the masked time mean
    targets: str = "tav"  # target modalities with a branch (Table 3 ablation: "t", "a", "v")
    grad_clip_value: float = 0.0  # clip every gradient entry to [-v, v] after backward; 0 = off


_DROPOUTS = (
    "text_dropout",
    "embed_dropout",
    "attn_dropout_t",
    "attn_dropout_a",
    "attn_dropout_v",
    "attn_dropout_self",
    "relu_dropout",
    "res_dropout",
    "output_dropout",
)


def validate_config(cfg: MulTConfig) -> None:
    """Raise ``ConfigError`` naming the field for values the model cannot be built with."""
    if cfg.hidden < 1 or cfg.heads < 1 or cfg.hidden % cfg.heads:
        raise ConfigError(
            f"mult.hidden: expected a positive multiple of heads={cfg.heads}, got {cfg.hidden}"
        )
    for name in ("layers", "self_layers", "conv_kernel_t", "conv_kernel_a", "conv_kernel_v"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"mult.{name}: expected an integer >= 1, got {getattr(cfg, name)}")
    for name in _DROPOUTS:
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"mult.{name}: expected a dropout rate in [0, 1), got {value}")
    if not (math.isfinite(cfg.grad_clip_value) and cfg.grad_clip_value >= 0):
        raise ConfigError(f"mult.grad_clip_value: expected >= 0, got {cfg.grad_clip_value}")
    if not cfg.targets or set(cfg.targets) - set(MODS) or len(set(cfg.targets)) != len(cfg.targets):
        raise ConfigError(
            f"mult.targets: expected distinct letters of 't', 'a', 'v', got {cfg.targets!r}"
        )
    if cfg.head == "classification" and cfg.num_classes < 2:
        raise ConfigError(f"mult.num_classes: classification needs >= 2, got {cfg.num_classes}")


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


def last_valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Section 3.3's "last element": (B, T, d), (B, T) -> (B, d), each row's last valid step (its
    length - 1, valid steps being a prefix); a row with no valid step gives zeros."""
    n = mask.sum(1)  # (B,)
    idx = (n - 1).clamp(min=0)[:, None, None].expand(-1, 1, x.shape[-1])  # (B, 1, d)
    return x.gather(1, idx).squeeze(1) * (n > 0).to(x.dtype)[:, None]


def all_full(lengths: torch.Tensor, T: int) -> bool:
    """True when ``lengths`` (B,) are on the CPU and every one is >= T (``length_mask`` all True).
    False for lengths on another device, without reading them (no host sync)."""
    return lengths.device.type == "cpu" and bool((lengths >= T).all())


def future_mask(tq: int, tk: int, device: torch.device | None = None) -> torch.Tensor:
    """The reference's ``buffered_future_mask``, (T_q, T_k) bool, True = hidden: query i may not see
    key j > i + |T_k - T_q| (the plain causal mask when T_q == T_k)."""
    i = torch.arange(tq, device=device)[:, None]
    j = torch.arange(tk, device=device)[None, :]
    return j > i + abs(tk - tq)


def sinusoidal_embedding(T: int, d: int, device: torch.device | None = None) -> torch.Tensor:
    """PE(T, d) of eq. 3's Z^[0] = X + PE, (T, d), in the authors' (fairseq) form: positions 1..T,
    channels [sin(p w_j); cos(p w_j)], w_j = 10000^(-j / (d/2 - 1)), zero channel for odd d."""
    half = d // 2
    step = math.log(10000.0) / max(half - 1, 1)
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -step)  # (d/2,)
    pos = torch.arange(1, T + 1, device=device, dtype=torch.float32)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)  # (T, 2 * (d // 2))
    if d % 2:
        emb = torch.cat([emb, emb.new_zeros(T, 1)], dim=1)
    return emb


def xavier_linear(d_in: int, d_out: int) -> nn.Linear:
    """The reference's ``Linear``: Xavier-uniform weight, zero bias."""
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# --- Section 3.1: crossmodal attention (eqs. 1-2) ------------------------------------------------


class MultiheadCrossAttention(nn.Module):
    """eqs. 1-2: CM_{beta->alpha}(X_alpha, X_beta) = softmax(Q_alpha K_beta^T / sqrt(d_k)) V_beta,
    per head, then out_proj. Q_alpha = X_alpha W_Q (the target), K_beta = X_beta W_K and
    V_beta = X_beta W_V (the source); self-attention when the source is the target itself.

    Parameters as the reference's: ``in_proj_weight`` (3d, d) = [W_Q; W_K; W_V], ``in_proj_bias``
    (3d,), ``out_proj`` Linear(d, d).
    """

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.d, self.heads, self.dropout = d, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, heads, T, d / heads), a view."""
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.d // self.heads).transpose(1, 2)

    def project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """eq. 1: Q = X_alpha W_Q, K = X_beta W_K, V = X_beta W_V (+ biases), each
        (B, heads, T, d / heads)."""
        w, b, d = self.in_proj_weight, self.in_proj_bias, self.d
        if key is query and value is query:  # self-attention: one matmul for all three
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        else:
            q = F.linear(query, w[:d], b[:d])
            k = F.linear(key, w[d : 2 * d], b[d : 2 * d])
            v = F.linear(value, w[2 * d :], b[2 * d :])
        return self._split(q), self._split(k), self._split(v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, T_q, d) from the target, key/value (B, T_k, d) from the source, key_mask
        (B, T_k) True on valid source steps -> output (B, T_q, d), and with ``need_weights`` the
        attention weights (B, heads, T_q, T_k) before dropout (else None). A query that sees no
        key (a row whose source has length 0) gets zero weights and a zero attention output
        rather than a softmax over nothing (NaN, in the backward too)."""
        B, tq, _ = query.shape
        tk = key.shape[1]
        q, k, v = self.project(query, key, value)
        allowed = None  # (B or 1, 1, T_q or 1, T_k), True = may attend
        if causal:
            allowed = ~future_mask(tq, tk, query.device)[None, None]
        if key_mask is not None:
            valid = key_mask[:, None, None, :].bool()
            allowed = valid if allowed is None else allowed & valid
        blind = None
        if allowed is not None:
            blind = ~allowed.any(-1, keepdim=True)  # queries that see no key
            allowed = allowed | blind  # give them every key, then zero their result
        p = self.dropout if self.training else 0.0
        weights = None
        # with attention dropout torch's fused kernel falls back to this same computation plus
        # checks (slower on CPU), so the explicit eq. 2 also serves training with dropout
        if need_weights or p > 0:  # the explicit eq. 2, as the reference computes it
            scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2)  # (B, h, T_q, T_k)
            scores = scores.float()  # the softmax in fp32, as the reference
            if allowed is not None:  # an additive -inf bias: no copy of the scores, no backward
                bias = torch.zeros(allowed.shape, device=scores.device)
                scores = scores + bias.masked_fill_(~allowed, float("-inf"))
            weights = torch.softmax(scores, dim=-1).to(q.dtype)
            out = F.dropout(weights, p, self.training) @ v  # (B, h, T_q, d / h)
            if need_weights and blind is not None:
                weights = weights.masked_fill(blind, 0.0)
        else:  # the same eq. 2, fused (3-4x faster on CPU at MOSI's shapes)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        if blind is not None:
            out = out.masked_fill(blind, 0.0)  # (B, h, T_q, d / h); what zero weights give
        out = out.transpose(1, 2).reshape(B, tq, self.d)  # (B, T_q, d)
        return self.out_proj(out), weights


# --- Section 3.2: the crossmodal transformer (eq. 4) ---------------------------------------------


class CrossmodalBlock(nn.Module):
    """eq. 4, block i: Z_hat = CM(LN(Z^[i-1]), LN(Z_beta^[0])) + Z^[i-1];
    Z^[i] = f_theta(LN(Z_hat)) + Z_hat, f_theta = Linear(4d, d)(ReLU(Linear(d, 4d))).
    ``ln_residual``: the residuals are LN(Z^[i-1]) and LN(Z_hat), as eq. 4 is printed."""

    def __init__(
        self,
        d: int,
        heads: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        ln_residual: bool = False,
    ) -> None:
        super().__init__()
        self.attn = MultiheadCrossAttention(d, heads, attn_dropout)
        self.fc1 = xavier_linear(d, 4 * d)
        self.fc2 = xavier_linear(4 * d, d)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(d)])
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout
        self.ln_residual = ln_residual

    def forward(
        self,
        z: torch.Tensor,
        src_k: torch.Tensor | None,
        src_v: torch.Tensor | None,
        key_mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        """z (B, T_q, d) the target stream; src_k/src_v (B, T_k, d) the source's Z^[0] (None:
        self-attention over z); key_mask (B, T_k) True on valid keys -> (B, T_q, d)."""
        norm = self.layer_norms[0]
        zn = norm(z)
        if src_k is None or src_v is None:
            k = v = zn
        else:  # the reference normalises the source with the target's LayerNorm
            k, v = norm(src_k), norm(src_v)
        h, _ = self.attn(zn, k, v, key_mask, causal)  # eqs. 1-2
        z = (zn if self.ln_residual else z) + F.dropout(h, self.res_dropout, self.training)
        zn = self.layer_norms[1](z)
        h = F.dropout(F.relu(self.fc1(zn)), self.relu_dropout, self.training)
        return (zn if self.ln_residual else z) + F.dropout(
            self.fc2(h), self.res_dropout, self.training
        )


class CrossmodalTransformer(nn.Module):
    """eq. 4: Z^[0] = sqrt(d) X + PE, then D blocks, then LayerNorm; (B, T_alpha, d) -> same.

    With a source beta it is the crossmodal transformer beta->alpha (each block reads the source's
    Z_beta^[0]); without one, the self-attention transformer of Section 3.3.
    """

    def __init__(
        self,
        d: int,
        heads: int,
        layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        position_embedding: bool = True,
        ln_residual: bool = False,
    ) -> None:
        super().__init__()
        self.d, self.embed_dropout, self.position_embedding = d, embed_dropout, position_embedding
        self.layers = nn.ModuleList(
            CrossmodalBlock(d, heads, attn_dropout, relu_dropout, res_dropout, ln_residual)
            for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(d)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Z^[0] = sqrt(d) X + PE(T, d), (B, T, d), before embedding dropout."""
        z = math.sqrt(self.d) * x
        if self.position_embedding:
            z = z + sinusoidal_embedding(x.shape[1], self.d, x.device).to(x.dtype)
        return z

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """x (B, T_alpha, d) the target; source (B, T_beta, d) or None; key_mask (B, T_beta) (or
        (B, T_alpha) without a source) True on valid steps -> (B, T_alpha, d)."""
        p, train = self.embed_dropout, self.training
        z = F.dropout(self.embed(x), p, train)
        src_k = src_v = None
        if source is not None:
            zs = self.embed(source)
            # keys and values get separate dropout masks, as in the reference
            src_k, src_v = F.dropout(zs, p, train), F.dropout(zs, p, train)
        for layer in self.layers:
            z = layer(z, src_k, src_v, key_mask, causal)
        return self.layer_norm(z)


# --- Section 3.2: temporal convolutions (eq. 3) --------------------------------------------------


class TemporalConv(nn.Module):
    """eq. 3: X_hat_m = Conv1D(X_m, k_m), (B, T, d_m) -> (B, T', d) with T' = T ("same") or
    T - k + 1 ("valid", the reference); no bias, as the reference."""

    def __init__(self, in_dim: int, d: int, kernel: int, padding: str) -> None:
        super().__init__()
        self.kernel, self.padding = kernel, padding
        pad: str | int = "same" if padding == "same" else 0
        self.conv = nn.Conv1d(in_dim, d, kernel, padding=pad, bias=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d_m), mask (B, T) -> features (B, T', d) and their mask (B, T'); a mask of
        None (every step valid) stays None."""
        if self.padding == "valid" and x.shape[1] < self.kernel:
            raise ValueError(
                f"mult: conv_padding='valid' needs sequences of at least conv_kernel="
                f"{self.kernel} steps, got T={x.shape[1]} (use conv_padding='same')"
            )
        if mask is not None:  # padding never enters a valid step's window
            x = x * mask.unsqueeze(-1).to(x.dtype)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        if self.padding == "valid" and mask is not None:
            # output t covers inputs t..t+k-1: valid iff step t+k-1 is
            mask = mask[:, self.kernel - 1 :]
        return h, mask


# --- the model (Fig. 2) ---------------------------------------------------------------------------


class MulT(MSAModel):
    """eq. 3 convolutions -> six crossmodal transformers (eq. 4) -> per target, eq. 5's
    concatenation through a self-attention transformer -> last elements -> residual head."""

    def __init__(self, cfg: MulTConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        d = cfg.hidden
        dims = {SHORT[m]: getattr(cfg, f"{m}_dim") for m in MODALITIES}
        self.mods = tuple(m for m in MODS if dims[m] > 0)  # the dataset's modalities
        if len(self.mods) < 2:
            raise ConfigError(
                f"mult: crossmodal attention needs at least two modalities with features, got "
                f"{list(self.mods)} (text_dim/audio_dim/vision_dim)"
            )
        self.targets = tuple(m for m in MODS if m in cfg.targets and m in self.mods)
        if not self.targets:
            raise ConfigError(
                f"mult.targets: none of {cfg.targets!r} has features ({list(self.mods)})"
            )
        self.classify = cfg.head == "classification"
        kernels = {"t": cfg.conv_kernel_t, "a": cfg.conv_kernel_a, "v": cfg.conv_kernel_v}
        attn_drop = {"t": cfg.attn_dropout_t, "a": cfg.attn_dropout_a, "v": cfg.attn_dropout_v}
        common = dict(
            relu_dropout=cfg.relu_dropout,
            res_dropout=cfg.res_dropout,
            embed_dropout=cfg.embed_dropout,
            position_embedding=cfg.position_embedding,
            ln_residual=cfg.ln_residual,
        )
        self.proj = nn.ModuleDict(
            {m: TemporalConv(dims[m], d, kernels[m], cfg.conv_padding) for m in self.mods}
        )
        # "a_to_t" is the paper's A -> L: queries from text, keys/values from audio
        self.crossmodal = nn.ModuleDict(
            {
                f"{s}_to_{t}": CrossmodalTransformer(
                    d, cfg.heads, cfg.layers, attn_drop[s], **common
                )
                for t in self.targets
                for s in self.mods
                if s != t
            }
        )
        width = d * (len(self.mods) - 1)  # 2d: eq. 5's concatenation
        self.self_attn = nn.ModuleDict(
            {
                t: CrossmodalTransformer(
                    width, cfg.heads, cfg.self_layers, cfg.attn_dropout_self, **common
                )
                for t in self.targets
            }
        )
        combined = width * len(self.targets)  # 6d
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out_layer = nn.Linear(combined, cfg.num_classes if self.classify else 1)

    def sources(self, target: str) -> tuple[str, ...]:
        """The source modalities of ``target``'s branch, in t, a, v order (as the reference)."""
        return tuple(s for s in self.mods if s != target)

    def encode(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
        """eq. 3 per modality: features (B, T_m', d) and valid-step masks (B, T_m').

        A modality whose every step is valid (no lengths, or CPU lengths all >= T) gets the mask
        None: then no step is masked anywhere (no mask product before the convolution, no
        attention bias, no zeroing of blind queries), which gives the all-True mask's results bit
        for bit (``tests/models/test_mult.py``) without its work (issue 18). Lengths on another
        device keep their mask: deciding would read them back to the host every step."""
        feats, masks = {}, {}
        for name in MODALITIES:
            m = SHORT[name]
            if m not in self.mods:
                continue
            if name not in batch:
                raise ValueError(f"mult: the batch lacks {name!r} (the config has {name}_dim > 0)")
            x = batch[name]  # (B, T, d_m)
            lengths = batch.get(f"{name}_len")
            mask = None  # every step valid
            if lengths is not None and not all_full(lengths, x.shape[1]):
                mask = length_mask(lengths.to(x.device), x.shape[1])  # (B, T)
            if m == "t":
                x = F.dropout(x, self.cfg.text_dropout, self.training)
            feats[m], masks[m] = self.proj[m](x, mask)  # eq. 3, (B, T', d)
        return feats, masks

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        cfg = self.cfg
        feats, masks = self.encode(batch)
        pooled = {}
        for t in self.targets:
            # eq. 4 for each source beta -> t, each (B, T_t, d); eq. 5 concatenates, (B, T_t, 2d)
            z = torch.cat(
                [
                    self.crossmodal[f"{s}_to_{t}"](feats[t], feats[s], masks[s], cfg.causal_mask)
                    for s in self.sources(t)
                ],
                dim=-1,
            )
            z = self.self_attn[t](z, None, masks[t], cfg.causal_mask)  # (B, T_t, 2d)
            pool = last_valid if cfg.pool == "last" else masked_mean
            mask = masks[t]
            if mask is None:  # every step valid
                mask = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
            pooled[t] = pool(z, mask)  # (B, 2d)
        h = torch.cat([pooled[t] for t in self.targets], dim=-1)  # (B, 6d)
        # the residual head: h + proj2(dropout(relu(proj1(h))))
        r = F.dropout(F.relu(self.proj1(h)), cfg.output_dropout, self.training)
        y = self.out_layer(self.proj2(r) + h)
        extras = {f"feature_{t}": pooled[t] for t in self.targets}
        extras["feature_f"] = h
        return ModelOutput(pred=y if self.classify else y.squeeze(-1), extras=extras)

    # Copied from models.unimodal.Unimodal.loss
    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        total = task_loss(out.pred, batch, self.cfg.head)
        value = total.detach()  # stays on the device (models.base: Scalar)
        return total, {"loss/task": value, "loss/total": value}

    def after_backward(
        self, out: ModelOutput, batch: dict[str, torch.Tensor], epoch: int
    ) -> dict[str, float]:
        """The reference's ``clip_grad_value_`` after every backward (``grad_clip_value``)."""
        if self.cfg.grad_clip_value > 0:
            nn.utils.clip_grad_value_(self.parameters(), self.cfg.grad_clip_value)
        return {}


# config_regression.json, "mult" -> "mosi" (MMSA 2.2.1); see the module docstring for the trainer
_MMSA_MOSI = {
    "hidden": 50,
    "heads": 10,
    "layers": 4,
    "self_layers": 4,  # max(nlevels, 3)
    "conv_kernel_t": 5,
    "conv_kernel_a": 5,
    "conv_kernel_v": 5,
    "text_dropout": 0.5,
    "embed_dropout": 0.2,
    "attn_dropout_t": 0.3,
    "attn_dropout_a": 0.2,
    "attn_dropout_v": 0.0,
    "attn_dropout_self": 0.3,
    "relu_dropout": 0.0,
    "res_dropout": 0.0,
    "output_dropout": 0.5,
    "grad_clip_value": 0.6,
}
_MMSA_TRAIN = {
    "optimizer": "adam",
    "lr": 2e-3,
    "batch_size": 16,
    "epochs": 30,
    "weight_decay": 0.0,  # the config's 0.005 never reaches the reference's optimiser
    "grad_clip": 0.0,  # the reference clips by value: grad_clip_value
    "patience": 8,  # the reference's early stop
}

SPEC = ModelSpec(
    name="mult",
    config_cls=MulTConfig,
    model_cls=MulT,
    variants={
        "full": {},
        # Table 3's single-target rows: [V, A -> L], [L, V -> A], [L, A -> V]
        "target_t": {"targets": "t"},
        "target_a": {"targets": "a"},
        "target_v": {"targets": "v"},
        # the reference's attention masking (MMSA attn_mask: true), for comparison
        "causal": {"causal_mask": True},
    },
    presets={
        "mmsa": {"model": dict(_MMSA_MOSI), "train": dict(_MMSA_TRAIN)},
        # one step per 128 samples: MMSA's update_epochs=8 x batch 16 (module docstring, 7.)
        "mmsa-accum": {"model": dict(_MMSA_MOSI), "train": {**_MMSA_TRAIN, "batch_size": 128}},
        # Table 5, CMU-MOSI; what it does not state keeps MMSA's values
        "paper": {
            "model": {
                **_MMSA_MOSI,
                "hidden": 40,
                "conv_kernel_t": 3,
                "conv_kernel_a": 3,
                "conv_kernel_v": 3,
                "text_dropout": 0.2,
                "attn_dropout_t": 0.2,
                "attn_dropout_a": 0.2,
                "attn_dropout_v": 0.2,
                "attn_dropout_self": 0.2,
                "output_dropout": 0.1,
                "grad_clip_value": 0.0,
            },
            "train": {
                "optimizer": "adam",
                "lr": 1e-3,
                "batch_size": 128,
                "epochs": 100,
                "grad_clip": 0.8,  # the authors' code clips the gradient norm
            },
        },
        # tests and smoke runs: MulT is slow on CPU, so a tiny model
        "quick": {
            "model": {
                "hidden": 8,
                "heads": 2,
                "layers": 1,
                "self_layers": 1,
                "conv_kernel_t": 3,
                "conv_kernel_a": 3,
                "conv_kernel_v": 3,
                "text_dropout": 0.1,
                "output_dropout": 0.1,
            },
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 3, "batch_size": 32},
        },
    },
    default_variant="full",
    search_space={
        "lr": ParamSpec(1e-4, 3e-3, log=True, target="train"),
        "layers": ParamSpec(1, 6, type="int"),  # D, crossmodal blocks
        "embed_dropout": ParamSpec(0.0, 0.5),
        "output_dropout": ParamSpec(0.0, 0.5),
    },
)
