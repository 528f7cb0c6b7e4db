"""Utterance-level data (T=1, e.g. the bc-LSTM CMU-MOSI features): every registered family and
variant trains through the engine (forward, loss, backward, every hook, validation, test at the best
epoch) for both heads, on standardised features, with finite results.

T=1 reaches every block at its edge: "same"-padded convolutions with a kernel wider than the
sequence, attention over a single key, CSD's (1, 1) similarity matrices, IPR's distances over one
step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from msaflow.feature_store.schema import SplitData
from msaflow.models import registry
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.data import standardize_splits
from msaflow.tasks.train import train_model

DIMS = {"text": 6, "audio": 5, "vision": 4}
# every variant with the regression head; each family's default variant with the classification head
# too
CASES = [
    (name, variant, 0) for name, spec in sorted(registry().items()) for variant in spec.variants
]
CASES += [(name, spec.default_variant, 3) for name, spec in sorted(registry().items())]


def _split(n: int, seed: int, classes: int) -> SplitData:
    rng = np.random.default_rng(seed)
    feats = {
        m: (rng.standard_normal((n, 1, d)) * 30 + 50).astype(np.float32) for m, d in DIMS.items()
    }
    labels = np.clip(rng.standard_normal(n) * 1.5, -3, 3).astype(np.float32)
    cls = rng.integers(0, classes, n) if classes else None
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=labels if cls is None else cls.astype(np.float32),
        class_labels=cls,
        features=feats,
        lengths=dict.fromkeys(DIMS, np.ones(n, dtype=np.int64)),
    )


@pytest.mark.parametrize(
    ("name", "variant", "classes"),
    CASES,
    ids=[f"{n}-{v}-{'classification' if c else 'regression'}" for n, v, c in CASES],
)
def test_every_family_trains_through_the_engine_at_t1(name, variant, classes):
    spec = {
        "text_dim": 6,
        "audio_dim": 5,
        "vision_dim": 4,
        "seq_len": 1,
        "head": "classification" if classes else "regression",
        "num_classes": classes or 1,
    }
    cfg = resolve_run_config(
        name,
        variant,
        "quick",
        input_spec=spec,
        train_overrides={"epochs": 2, "batch_size": 8, "device": "cpu", "seed": 0},
    )
    splits, _ = standardize_splits(
        {
            "train": _split(16, 0, classes),
            "valid": _split(8, 1, classes),
            "test": _split(8, 2, classes),
        }
    )
    result = train_model(
        cfg,
        splits,
        data_kind="emotion" if classes else "sentiment",
        class_names=["a", "b", "c"] if classes else None,
    )
    assert len(result.history) == 2
    assert all(math.isfinite(v) for row in result.epoch_traces for v in row.values()), (
        result.epoch_traces
    )
    key = "test/acc" if classes else "test/mae"
    assert key in result.test and math.isfinite(result.test[key])
