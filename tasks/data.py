"""From feature-store splits to device batches: vectorised, seeded, no per-row Python.

Also the feature standardisation fit on the training split (``standardize_splits``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from msaflow.models.base import MODALITIES

if TYPE_CHECKING:
    from msaflow.feature_store import SplitData

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
    # each row's position in its split: batches carry it, so a model can keep a per-sample memory
    # of the training split (Self-MM's generated unimodal labels)
    out["index"] = torch.arange(len(out["label"]), dtype=torch.int64)
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
    """Yield batches; the order for ``shuffle`` depends only on ``seed`` (resume replays it
    exactly).

    On CUDA each batch is gathered straight into pinned host memory, so its copy to the device is
    asynchronous (from pageable memory ``non_blocking`` still stalls the host); the caching host
    allocator keeps that buffer until the copy is done.
    """
    n = num_rows(tensors)
    if shuffle:
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    cuda = device.type == "cuda"
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if not cuda:
            yield {k: v.index_select(0, idx).to(device) for k, v in tensors.items()}
            continue
        batch = {}
        for k, v in tensors.items():
            host = torch.empty((len(idx), *v.shape[1:]), dtype=v.dtype, pin_memory=True)
            torch.index_select(v, 0, idx, out=host)
            batch[k] = host.to(device, non_blocking=True)
        yield batch


def num_batches(tensors: Batch, batch_size: int) -> int:
    return (num_rows(tensors) + batch_size - 1) // batch_size


# --------------------------------------------------------------------------------------------
# Feature standardisation fit on the training split
# --------------------------------------------------------------------------------------------
# Raw real features span very different scales (bc-LSTM openSMILE audio reaches ~380, text lies in
# +-1.5); a per-sample LayerNorm does not fix that across the dataset. So every modality's every
# dimension is centred and scaled with the mean and std of the *training* split's valid frames
# (padded frames past a sample's length are excluded and stay exactly zero). Valid and test get the
# same transform. A dimension whose train std is below ``eps`` is only centred (std taken as 1), so
# it becomes 0 on train instead of dividing by ~0. With subject folds each fold is its own store
# whose "train" split is the fold's training part, so fitting on "train" never sees the fold's
# valid/test rows. Refitting on standardised data is the identity (mean 0, std 1), so applying it
# twice does no harm.

STD_EPS = 1e-6
_CHUNK_ROWS = 4096  # rows per float64 pass: bounded memory on MOSEI-sized splits


def _valid_mask(lengths: np.ndarray, steps: int) -> np.ndarray:
    """(N, T) bool, True on frames before each row's length."""
    return np.arange(steps)[None, :] < np.asarray(lengths).reshape(-1, 1)


@dataclass(frozen=True)
class Standardization:
    """Per-modality, per-dimension mean and std of the training split's valid frames."""

    mean: dict[str, np.ndarray]  # modality -> (d,) float64
    std: dict[str, np.ndarray]  # modality -> (d,) float64; constant dims hold 1.0
    frames: dict[str, int]  # valid frames the statistics were computed over
    constant: dict[str, list[int]]  # dims whose train std < eps (centred only)
    eps: float = STD_EPS
    fit_on: str = "train"

    def apply(self, split: SplitData) -> SplitData:
        """A copy of ``split`` with standardised features; padded frames stay 0. Inputs are not
        modified."""
        return dataclasses.replace(split, features=self.apply_arrays(split.features, split.lengths))

    def apply_arrays(
        self, features: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``apply`` on plain arrays: modality -> (N, T, d) features and (N,) lengths, as a store
        holds them (the served model, ``tasks.serving``, standardises its inputs with this)."""
        out = {}
        for m, x in features.items():
            if m not in self.mean:
                raise ValueError(
                    f"standardization: no statistics for modality {m!r}; fit on {sorted(self.mean)}"
                )
            if x.shape[-1] != len(self.mean[m]):
                raise ValueError(
                    f"standardization: {m} has {x.shape[-1]} dims, statistics have "
                    f"{len(self.mean[m])}"
                )
            mask = _valid_mask(lengths[m], x.shape[1])[..., None]
            mean, std = self.mean[m].astype(np.float32), self.std[m].astype(np.float32)
            out[m] = np.where(mask, (x - mean) / std, 0.0).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (logged as the ``data/standardization.json`` artifact)."""
        return {
            "fit_on": self.fit_on,
            "eps": self.eps,
            "modalities": {
                m: {
                    "dim": len(self.mean[m]),
                    "frames": self.frames[m],
                    "mean": self.mean[m].tolist(),
                    "std": self.std[m].tolist(),
                    "constant_dims": list(self.constant[m]),
                }
                for m in self.mean
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardization:
        mods = d["modalities"]
        return cls(
            mean={m: np.asarray(v["mean"], dtype=np.float64) for m, v in mods.items()},
            std={m: np.asarray(v["std"], dtype=np.float64) for m, v in mods.items()},
            frames={m: int(v["frames"]) for m, v in mods.items()},
            constant={m: [int(i) for i in v["constant_dims"]] for m, v in mods.items()},
            eps=float(d.get("eps", STD_EPS)),
            fit_on=str(d.get("fit_on", "train")),
        )


def fit_standardization(train: SplitData, eps: float = STD_EPS) -> Standardization:
    """Mean and (population) std per modality and dimension over ``train``'s valid frames only.

    Two float64 passes in row chunks (mean, then squared deviations): stable and memory-bounded.
    A modality with no valid frame at all gets mean 0, std 1 (the identity).
    """
    mean, std, frames, constant = {}, {}, {}, {}
    for m, x in train.features.items():
        lengths = np.asarray(train.lengths[m])
        d = x.shape[-1]
        total, count = np.zeros(d), 0
        for s in range(0, len(x), _CHUNK_ROWS):
            mask = _valid_mask(lengths[s : s + _CHUNK_ROWS], x.shape[1])
            total += x[s : s + _CHUNK_ROWS][mask].sum(axis=0, dtype=np.float64)
            count += int(mask.sum())
        mu = total / count if count else np.zeros(d)
        sq = np.zeros(d)
        for s in range(0, len(x), _CHUNK_ROWS):
            mask = _valid_mask(lengths[s : s + _CHUNK_ROWS], x.shape[1])
            sq += ((x[s : s + _CHUNK_ROWS][mask].astype(np.float64) - mu) ** 2).sum(axis=0)
        sd = np.sqrt(sq / count) if count else np.ones(d)
        flat = sd < eps
        mean[m], std[m], frames[m] = mu, np.where(flat, 1.0, sd), count
        constant[m] = [int(i) for i in np.flatnonzero(flat)]
    return Standardization(mean=mean, std=std, frames=frames, constant=constant, eps=eps)


def standardize_splits(
    splits: Mapping[str, SplitData],
    enabled: bool = True,
    fit_on: str = "train",
    eps: float = STD_EPS,
) -> tuple[dict[str, SplitData], Standardization | None]:
    """Fit on ``splits[fit_on]`` and apply to every split: ``(new splits, statistics)``.

    ``enabled=False`` returns the splits unchanged and ``None``. The caller's arrays (possibly the
    process-wide cache of ``load_split_shared``) are never modified.
    """
    if not enabled:
        return dict(splits), None
    if fit_on not in splits:
        raise ValueError(
            f"standardization is fit on the {fit_on!r} split; got splits {sorted(splits)}"
        )
    stats = dataclasses.replace(fit_standardization(splits[fit_on], eps), fit_on=fit_on)
    return {name: stats.apply(s) for name, s in splits.items()}, stats


def load_standardized(
    path: str | Path,
    names: Sequence[str],
    enabled: bool = True,
    prepare: Callable[[dict[str, SplitData]], dict[str, SplitData]] | None = None,
) -> tuple[dict[str, SplitData], Standardization | None]:
    """Splits ``names`` of a store, standardised with the store's train statistics.

    For callers that do not hold the train split (evaluation on test): train is loaded (shared
    cache) to fit, then dropped unless asked for. ``prepare`` maps the loaded splits before the
    fit (``tasks.text_finetune.input_splits``: a fine-tuned encoder's store without its text).
    """
    from msaflow.feature_store import load_split_shared

    wanted = list(names)
    loaded = {
        n: load_split_shared(path, n)
        for n in dict.fromkeys([*wanted, "train"] if enabled else wanted)
    }
    out, stats = standardize_splits(prepare(loaded) if prepare else loaded, enabled)
    return {n: out[n] for n in wanted}, stats
