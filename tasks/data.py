"""From feature-store splits to device batches: vectorised, seeded, no per-row Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from models.base import MODALITIES

Batch = dict[str, torch.Tensor]


def split_to_tensors(split) -> Batch:
    """A ``feature_store.SplitData`` as a dict of CPU tensors sharing the numpy buffers."""
    out: Batch = {}
    for m in MODALITIES:
        if m in split.features:
            out[m] = torch.from_numpy(np.ascontiguousarray(split.features[m], dtype=np.float32))
            out[f"{m}_len"] = torch.from_numpy(np.asarray(split.lengths[m], dtype=np.int64))
    out["label"] = torch.from_numpy(np.asarray(split.labels, dtype=np.float32))
    if getattr(split, "class_labels", None) is not None:
        out["class_label"] = torch.from_numpy(np.asarray(split.class_labels, dtype=np.int64))
    return out


def subset(tensors: Batch, index: np.ndarray | torch.Tensor) -> Batch:
    idx = torch.as_tensor(index, dtype=torch.long)
    return {k: v.index_select(0, idx) for k, v in tensors.items()}


def num_rows(tensors: Batch) -> int:
    return int(tensors["label"].shape[0])


def iterate_batches(
    tensors: Batch,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterator[Batch]:
    """Yield batches; the order for ``shuffle`` depends only on ``seed`` (resume replays it exactly)."""
    n = num_rows(tensors)
    if shuffle:
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    non_blocking = device.type == "cuda"
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield {k: v.index_select(0, idx).to(device, non_blocking=non_blocking) for k, v in tensors.items()}


def num_batches(tensors: Batch, batch_size: int) -> int:
    return (num_rows(tensors) + batch_size - 1) // batch_size
