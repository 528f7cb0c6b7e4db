"""Single-modality baseline: how far one modality's features go on their own.

Used to benchmark real features (e.g. text-only on CMU-MOSI) against the multimodal models. It reads
only ``batch[modality]`` and ``batch[f"{modality}_len"]``; the other modalities may be absent from
the batch (their ``*_dim`` then 0) and never influence the output.

Encoders (``encoder``):

- ``"gru"``: a bidirectional GRU over the real steps (packed by length); the final forward and
  backward states, (B, 2h), feed the head.
- ``"mean"``: masked mean over time, then ``layers`` x (Linear -> ReLU -> Dropout), (B, h).

Head: Dropout -> Linear to one score (regression) or ``num_classes`` logits (classification).
Loss: the task loss alone (L1 / cross-entropy, ``models.base.task_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from msaflow.errors import ConfigError
from msaflow.models.base import (
    MODALITIES,
    InputSpec,
    Modality,
    ModelOutput,
    ModelSpec,
    MSAModel,
    Scalar,
    task_loss,
)
from msaflow.models.spec import Cell, TableSpec


@dataclass
class UnimodalConfig(InputSpec):
    modality: Modality = "text"
    encoder: Literal["gru", "mean"] = "gru"
    hidden: int = 128
    layers: int = 1  # GRU layers, or MLP layers after the mean
    bidirectional: bool = True  # GRU only
    dropout: float = 0.1
    input_norm: bool = True  # LayerNorm on raw features (COVAREP spans orders of magnitude)


# Copied from models.mmafnet.length_mask
def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


# Copied from models.mmafnet.masked_mean
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d); a length-0 row pools to zeros instead of NaN."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class Unimodal(MSAModel):
    """One modality -> encoder -> head."""

    def __init__(self, cfg: UnimodalConfig):
        super().__init__()
        if cfg.modality not in MODALITIES:
            raise ConfigError(
                f"unimodal: modality must be text, audio or vision, got {cfg.modality!r}"
            )
        d_in = getattr(cfg, f"{cfg.modality}_dim")
        if d_in <= 0:
            raise ConfigError(
                f"unimodal({cfg.modality}): {cfg.modality}_dim is {d_in}; "
                f"the dataset has no {cfg.modality} features"
            )
        if cfg.head == "classification" and cfg.num_classes < 2:
            raise ConfigError(
                f"unimodal: classification needs num_classes >= 2, got {cfg.num_classes}"
            )
        if cfg.layers < 1:
            raise ConfigError(f"unimodal: layers must be >= 1, got {cfg.layers}")
        self.cfg = cfg
        self.norm = nn.LayerNorm(d_in) if cfg.input_norm else nn.Identity()
        if cfg.encoder == "gru":
            self.gru = nn.GRU(
                d_in,
                cfg.hidden,
                num_layers=cfg.layers,
                batch_first=True,
                bidirectional=cfg.bidirectional,
                dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            )
            feat = cfg.hidden * (2 if cfg.bidirectional else 1)
        elif cfg.encoder == "mean":
            blocks: list[nn.Module] = []
            for i in range(cfg.layers):
                blocks += [
                    nn.Linear(d_in if i == 0 else cfg.hidden, cfg.hidden),
                    nn.ReLU(),
                    nn.Dropout(cfg.dropout),
                ]
            self.mlp = nn.Sequential(*blocks)
            feat = cfg.hidden
        else:
            raise ValueError(f"unimodal: encoder must be 'gru' or 'mean', got {cfg.encoder!r}")
        out = cfg.num_classes if cfg.head == "classification" else 1
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(feat, out))

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.cfg.modality
        if m not in batch:
            present = sorted(k for k in batch if k in MODALITIES)
            raise ValueError(f"unimodal({m}): the batch has no {m!r} features (it has {present})")
        x = batch[m]  # (B, T, d)
        lengths = batch.get(f"{m}_len")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        # a zero-length sample still needs one step for the GRU; it reads its (padding) step 0
        return x, lengths.clamp(min=1, max=x.shape[1])

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        x, lengths = self._inputs(batch)
        x = self.norm(x)  # (B, T, d)
        if self.cfg.encoder == "gru":
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, h = self.gru(packed)  # (layers * dirs, B, h)
            dirs = 2 if self.cfg.bidirectional else 1
            feat = torch.cat(list(h[-dirs:]), dim=-1)  # last layer's states: (B, dirs * h)
        else:
            # lengths >= 1 (``_inputs``), so no row is empty
            feat = self.mlp(masked_mean(x, length_mask(lengths, x.shape[1])))  # (B, h)
        y = self.head(feat)
        pred = y.squeeze(-1) if self.cfg.head == "regression" else y
        return ModelOutput(pred=pred)

    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        total = task_loss(out.pred, batch, self.cfg.head)
        value = total.detach()  # stays on the device (models.base: Scalar)
        return total, {"loss/task": value, "loss/total": value}


SPEC = ModelSpec(
    name="unimodal",
    config_cls=UnimodalConfig,
    model_cls=Unimodal,
    variants={
        "text": {"modality": "text"},
        "audio": {"modality": "audio"},
        "vision": {"modality": "vision"},
    },
    presets={
        "paper": {
            "model": {},
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 30, "batch_size": 32},
        },
        "quick": {
            "model": {"hidden": 32},
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 4, "batch_size": 32},
        },
    },
    default_variant="text",
    tables={
        # Not a paper table: the modality imbalance itself (docs/results.md). One encoder per
        # modality, alone; on the simulation the text encoder should learn fastest and furthest.
        "unimodal": TableSpec(
            model="unimodal",
            cells=tuple(Cell(m, m) for m in ("text", "audio", "vision")),
            baseline="text",
            paper=None,
            description="Each modality alone (the imbalance SGM and IPR address).",
        ),
    },
)
