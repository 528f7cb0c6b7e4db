"""Every model family x every simulated task x aligned/unaligned trains one epoch and reports the
task's metrics (issue 14: the paths next to the well-tested default were broken).

Tiny on purpose: 16-24 rows per split, hidden sizes of 16, one epoch, the plain ``train_model``
(no Prefect). Depression runs on one subject-disjoint fold (``tasks.folds.fold_splits``), as
``--folds`` does. The model families come from the registry, so a new one joins the matrix.

"Unaligned" is built from the simulated (word-aligned) store the way MMSA's unaligned files
differ from the aligned ones: audio and vision keep their own frame rates, so each modality has
its own sequence length (text 50 words, audio 100 and vision 150 frames here).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from msaflow.feature_store import SplitData, load_dataset, synthesize
from msaflow.models import registry
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.folds import fold_splits
from msaflow.tasks.metrics import DEFAULT_SELECTION
from msaflow.tasks.train import train_model

IEMOCAP = ["neutral", "happy", "sad", "angry"]
EXPECTED = {
    "sentiment": {"acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7", "mae", "corr"},
    "emotion": {"acc", "f1_weighted", "f1_macro", "acc_avg", "f1_avg"}
    | {f"{k}_{c}" for k in ("acc", "f1", "f1pos") for c in IEMOCAP},
    "depression": {"mae", "rmse", "corr", "precision", "recall", "f1"},
}
# profile -> synthesis scale (the generator keeps at least 16 rows, or whole subjects, per split)
PROFILES = {"mosi": 0.01, "mosei": 0.001, "iemocap": 0.005, "cmdc": 0.05}
# tiny widths for whichever of these fields a model config has
TINY = {"hidden": 16, "d": 16, "head_hidden": 16, "attn_heads": 2, "heads": 2, "ff_mult": 1}
FRAME_RATE = {"text": 1, "audio": 2, "vision": 3}  # unaligned: frames per word


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("matrix")
    out = {}
    for profile, scale in PROFILES.items():
        synthesize(profile, root / profile, seed=0, scale=scale)
        out[profile] = load_dataset(root / profile)
    return out


def _unaligned(split: SplitData) -> SplitData:
    features, lengths = {}, {}
    for m, x in split.features.items():
        r = FRAME_RATE[m]
        features[m] = np.repeat(x, r, axis=1)  # each word's frame seen r times: T_m = r * T
        lengths[m] = split.lengths[m] * r
    return dataclasses.replace(split, features=features, lengths=lengths)


def _splits(
    manifest, splits: dict[str, SplitData], layout: str
) -> tuple[dict[str, SplitData], dict]:
    if manifest.data_kind == "depression":  # --folds: pool the store, take fold 1 of 2 by subject
        parts = [splits[s] for s in ("train", "valid", "test")]
        pooled = SplitData(
            ids=np.concatenate([p.ids for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            features={m: np.concatenate([p.features[m] for p in parts]) for m in parts[0].features},
            lengths={m: np.concatenate([p.lengths[m] for p in parts]) for m in parts[0].lengths},
            subjects=np.concatenate([p.subjects for p in parts]),
        )
        fold = fold_splits(pooled.subjects, pooled.labels, k=2, seed=0)[0]
        splits = {name: pooled.take(idx) for name, idx in fold.items()}
        assert not set(splits["train"].subjects) & set(splits["test"].subjects)
    spec = manifest.input_spec()
    if layout == "unaligned":
        splits = {name: _unaligned(s) for name, s in splits.items()}
        spec = {**spec, "seq_len": max(x.shape[1] for x in splits["train"].features.values())}
    return splits, spec


def _cases():
    for model in registry():
        for profile in PROFILES:
            for layout in ("aligned", "unaligned"):
                yield pytest.param(model, profile, layout, id=f"{model}-{profile}-{layout}")


@pytest.mark.parametrize(("model", "profile", "layout"), list(_cases()))
def test_one_epoch_reports_the_tasks_metrics(stores, model, profile, layout):
    manifest, store_splits = stores[profile]
    splits, input_spec = _splits(manifest, store_splits, layout)
    fields = {f.name for f in dataclasses.fields(registry()[model].config_cls)}
    model_overrides = {k: v for k, v in TINY.items() if k in fields}
    if layout == "unaligned" and "align" in fields:
        model_overrides["align"] = "interpolate"  # MMCL needs equal lengths, or to resample them
    cfg = resolve_run_config(
        model,
        preset="quick",
        model_overrides=model_overrides,
        train_overrides={"epochs": 1, "batch_size": 8, "device": "cpu"},
        input_spec=input_spec,
        data_kind=manifest.data_kind,
        class_names=manifest.class_names,
    )
    assert (cfg.train.select_metric, cfg.train.select_mode) == DEFAULT_SELECTION[manifest.data_kind]

    result = train_model(
        cfg, splits, data_kind=manifest.data_kind, class_names=manifest.class_names
    )

    expected = EXPECTED[manifest.data_kind]
    for prefix, got in (("valid", result.best_valid), ("test", result.test)):
        names = {k.split("/", 1)[1] for k in got if k.startswith(f"{prefix}/")}
        assert {n for n in names if not n.startswith("loss")} == expected, prefix
        assert all(k.startswith(f"{prefix}/") for k in got)
    assert len(result.history) == 1 and result.best_epoch == 0
    assert math.isfinite(result.best_valid[cfg.train.select_metric])
