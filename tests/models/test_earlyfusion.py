"""Early-fusion baseline: masked-mean pooling, concat order, heads, registry, engine, T=1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msaflow.models import get_spec
from msaflow.models.earlyfusion import SPEC, EarlyFusion, EarlyFusionConfig, masked_mean
from msaflow.tasks.config import TrainConfig, apply_overrides, resolve_run_config

DIMS = {"text": 3, "audio": 2, "vision": 4}


def tiny(**kw) -> EarlyFusionConfig:
    base = dict(text_dim=3, audio_dim=2, vision_dim=4, hidden=8, layers=1, dropout=0.0)
    return EarlyFusionConfig(**{**base, **kw})


def make_batch(b: int = 4, t: int = 5, classes: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for m, d in DIMS.items():
        batch[m] = torch.randn(b, t, d, generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        lengths[0] = t
        batch[f"{m}_len"] = lengths
    batch["label"] = torch.randn(b, generator=g)
    if classes:
        batch["class_label"] = torch.randint(0, classes, (b,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


def test_masked_mean_respects_lengths_on_hand_made_tensors():
    x = torch.tensor(
        [
            [[1.0, 10.0], [3.0, 30.0], [1e6, 1e6]],
            [[4.0, 40.0], [1e6, 1e6], [1e6, 1e6]],
            [[7.0, 7.0], [7.0, 7.0], [7.0, 7.0]],
        ]
    )
    out = masked_mean(x, torch.tensor([2, 1, 0]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 20.0], [4.0, 40.0], [0.0, 0.0]]))
    torch.testing.assert_close(masked_mean(x[:1, :2], None), torch.tensor([[2.0, 20.0]]))


def test_fused_input_is_the_concat_of_pooled_modalities_in_text_audio_vision_order():
    model = EarlyFusion(tiny())
    batch = make_batch()
    fused = model.fuse(batch)
    assert fused.shape == (4, sum(DIMS.values()))
    i = 1
    n = int(batch["audio_len"][i])
    torch.testing.assert_close(fused[i, 3:5], batch["audio"][i, :n].mean(dim=0))
    n = int(batch["text_len"][i])
    torch.testing.assert_close(fused[i, :3], batch["text"][i, :n].mean(dim=0))


def test_padding_content_does_not_change_the_output():
    model = EarlyFusion(tiny()).eval()
    batch = make_batch()
    noisy = dict(batch)
    for m in DIMS:
        noisy[m] = batch[m].clone()
        noisy[m][torch.arange(5)[None, :] >= batch[f"{m}_len"][:, None]] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred)


@pytest.mark.parametrize("t", [1, 5])
def test_regression_and_classification_heads(t):
    reg = EarlyFusion(tiny())
    batch = make_batch(t=t)
    out = reg(batch)
    assert out.pred.shape == (4,)
    total, parts = reg.loss(out, batch)
    total.backward()
    assert set(parts) == {"loss/task", "loss/total"}
    cls = EarlyFusion(tiny(head="classification", num_classes=3, layers=2))
    batch = make_batch(t=t, classes=3)
    out = cls(batch)
    assert out.pred.shape == (4, 3)
    cls.loss(out, batch)[0].backward()


def test_uses_only_the_modalities_with_features():
    model = EarlyFusion(tiny(vision_dim=0))
    batch = make_batch()
    batch.pop("vision"), batch.pop("vision_len")
    assert model.fuse(batch).shape == (4, 5)
    with pytest.raises(ValueError, match="lacks \\['audio'\\]"):
        model({k: v for k, v in batch.items() if not k.startswith("audio")})
    with pytest.raises(ValueError, match="every \\*_dim is 0"):
        EarlyFusion(tiny(text_dim=0, audio_dim=0, vision_dim=0))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        EarlyFusion(tiny(head="classification", num_classes=1))
    with pytest.raises(ValueError, match="layers must be >= 1"):
        EarlyFusion(tiny(layers=0))


def test_registered_with_variants_and_presets():
    assert get_spec("earlyfusion") is SPEC or get_spec("earlyfusion").model_cls is EarlyFusion
    assert SPEC.default_variant in SPEC.variants
    assert {"quick", "paper"} <= set(SPEC.presets)
    for name, preset in SPEC.presets.items():
        apply_overrides(EarlyFusionConfig(), preset["model"], name)
        apply_overrides(TrainConfig(), preset["train"], name)
    cfg = resolve_run_config(
        "earlyfusion",
        None,
        "quick",
        input_spec={"text_dim": 3, "audio_dim": 2, "vision_dim": 4, "seq_len": 1},
    )
    assert cfg.model_cfg.hidden == 32 and cfg.variant == "default"


def _split(n: int, seed: int, t: int = 1):
    from msaflow.feature_store.schema import SplitData

    rng = np.random.default_rng(seed)
    feats = {
        m: (rng.standard_normal((n, t, d)) * 50 + 100).astype(np.float32) for m, d in DIMS.items()
    }
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=np.clip((feats["text"][:, 0, 0] - 100) / 25, -3, 3).astype(np.float32),
        features=feats,
        lengths=dict.fromkeys(DIMS, np.full(n, t)),
    )


def test_trains_through_the_engine_at_t1_on_standardised_features():
    from msaflow.tasks.data import standardize_splits
    from msaflow.tasks.train import train_model

    spec = {"text_dim": 3, "audio_dim": 2, "vision_dim": 4, "seq_len": 1}
    cfg = resolve_run_config(
        "earlyfusion",
        None,
        "quick",
        train_overrides={"epochs": 2, "batch_size": 16},
        input_spec=spec,
    )
    splits, stats = standardize_splits(
        {"train": _split(48, 0), "valid": _split(16, 1), "test": _split(16, 2)}
    )
    assert abs(float(stats.mean["text"][0]) - 100) < 30
    result = train_model(cfg, splits)
    assert np.isfinite(result.test["test/mae"])
