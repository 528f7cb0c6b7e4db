"""Early-fusion baseline: pooled features of every modality, concatenated, then an MLP.

What a fusion method has to beat. Each modality present in the dataset (``*_dim > 0``) is pooled
over its valid frames -- the mean over a sample's length, so padding never counts -- and the pooled
vectors are concatenated in the order text, audio, vision, (B, d_t + d_a + d_v). The features it
sees are the pipeline's train-fit standardised ones (``train.standardize``), so no modality
dominates by scale.

MLP: ``layers`` x (Linear -> ReLU -> Dropout) of width ``hidden``; head: Linear to one score
(regression) or ``num_classes`` logits (classification). Loss: the task loss alone
(L1 / cross-entropy, ``models.base.task_loss``). A sample with no valid frame in a modality pools
that modality to zeros. Utterance-level data (T=1) is the same code path: the mean of one frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from msaflow.errors import ConfigError
from msaflow.models.base import (
    MODALITIES,
    InputSpec,
    ModelOutput,
    ModelSpec,
    MSAModel,
    Scalar,
    task_loss,
)


@dataclass
class EarlyFusionConfig(InputSpec):
    hidden: int = 128
    layers: int = 2  # hidden Linear -> ReLU -> Dropout blocks before the head (>= 1)
    dropout: float = 0.1


# Copied from models.mmafnet.length_mask
def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


# Copied from models.mmafnet.masked_mean with masked_mean->mean_over_mask
def mean_over_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d); a length-0 row pools to zeros instead of NaN."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, d) -> (B, d): mean over each row's first ``lengths`` frames (all T without lengths);
    a row with length 0 pools to zeros."""
    if lengths is None:
        return x.mean(dim=1)
    return mean_over_mask(x, length_mask(lengths, x.shape[1]))


class EarlyFusion(MSAModel):
    """Concat of per-modality masked means -> MLP -> head."""

    def __init__(self, cfg: EarlyFusionConfig):
        super().__init__()
        if cfg.head == "classification" and cfg.num_classes < 2:
            raise ConfigError(
                f"earlyfusion: classification needs num_classes >= 2, got {cfg.num_classes}"
            )
        if cfg.layers < 1:
            raise ConfigError(f"earlyfusion: layers must be >= 1, got {cfg.layers}")
        if cfg.hidden < 1:
            raise ConfigError(f"earlyfusion: hidden must be >= 1, got {cfg.hidden}")
        self.modalities = tuple(m for m in MODALITIES if getattr(cfg, f"{m}_dim") > 0)
        if not self.modalities:
            raise ConfigError("earlyfusion: every *_dim is 0; the dataset has no features")
        self.cfg = cfg
        d_in = sum(getattr(cfg, f"{m}_dim") for m in self.modalities)
        blocks: list[nn.Module] = []
        for i in range(cfg.layers):
            blocks += [
                nn.Linear(d_in if i == 0 else cfg.hidden, cfg.hidden),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
            ]
        self.mlp = nn.Sequential(*blocks)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes if cfg.head == "classification" else 1)

    def fuse(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The early-fused input: [mean_t; mean_a; mean_v], (B, sum of dims)."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise ValueError(
                f"earlyfusion: the batch lacks {missing} (the config has dims for "
                f"{list(self.modalities)})"
            )
        return torch.cat(
            [masked_mean(batch[m], batch.get(f"{m}_len")) for m in self.modalities], dim=-1
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        y = self.head(self.mlp(self.fuse(batch)))
        return ModelOutput(pred=y.squeeze(-1) if self.cfg.head == "regression" else y)

    # Copied from models.unimodal.Unimodal.loss
    def loss(
        self, out: ModelOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Scalar]]:
        total = task_loss(out.pred, batch, self.cfg.head)
        value = total.detach()  # stays on the device (models.base: Scalar)
        return total, {"loss/task": value, "loss/total": value}


SPEC = ModelSpec(
    name="earlyfusion",
    config_cls=EarlyFusionConfig,
    model_cls=EarlyFusion,
    variants={"default": {}},
    presets={
        # not from a paper: the same optimiser and budget as unimodal's "paper" preset, so the
        # baseline rows of a benchmark table are trained alike
        "paper": {
            "model": {},
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 30, "batch_size": 32},
        },
        "quick": {
            "model": {"hidden": 32},
            "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 4, "batch_size": 32},
        },
    },
    default_variant="default",
)
