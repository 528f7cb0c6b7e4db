"""LMF: the factor contraction against TFN's full-rank tensor product on hand-made factors, the
trained fusion weights (issue 18), masking, the contract, and parity with the reference
(thuiar/MMSA 2.2.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msaflow.models import get_spec
from msaflow.models.base import ModelOutput
from msaflow.models.lmf import (
    LMF,
    REFERENCE_OUTPUTS,
    SPEC,
    LMFConfig,
    append_one,
    full_rank_weight,
    low_rank_fusion,
    rank_products,
)
from msaflow.models.tfn import tensor_fusion
from msaflow.tasks.config import TrainConfig, apply_overrides, resolve_run_config
from msaflow.tasks.train import build_optimizer, count_trainable_params

DIMS = {"text": 6, "audio": 3, "vision": 4}
DIMS_SPEC = {"text_dim": 6, "audio_dim": 3, "vision_dim": 4, "seq_len": 5}
MOSI = {"text_dim": 768, "audio_dim": 5, "vision_dim": 20, "seq_len": 50}  # MMSA aligned MOSI


def tiny(**kw) -> LMFConfig:
    base = dict(
        text_dim=DIMS["text"],
        audio_dim=DIMS["audio"],
        vision_dim=DIMS["vision"],
        seq_len=5,
        text_hidden=5,
        text_out=3,
        audio_hidden=2,
        vision_hidden=4,
        rank=2,
        audio_dropout=0.0,
        vision_dropout=0.0,
    )
    return LMFConfig(**{**base, **kw})


def make_batch(b: int = 4, t: int = 5, classes: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
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


# --- the factor contraction, by hand ----------------------------------------------------------

# z_a = [2], z_v = [3], z_t = [-1]; rank 2, one output. Factors W_m^(i) act on [1; z_m].
Z_A, Z_V, Z_T = torch.tensor([[2.0]]), torch.tensor([[3.0]]), torch.tensor([[-1.0]])
A = torch.tensor([[[1.0], [1.0]], [[0.0], [1.0]]])  # [1, 2] . -> 3 (i=0), 2 (i=1)
V = torch.tensor([[[1.0], [0.0]], [[2.0], [1.0]]])  # [1, 3] . -> 1, 5
T = torch.tensor([[[1.0], [-1.0]], [[4.0], [1.0]]])  # [1, -1] . -> 2, 3
LAMBDA, BIAS = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.25]])


def test_factor_contraction_on_hand_made_factors():
    zs = [append_one(Z_A), append_one(Z_V), append_one(Z_T)]
    per_rank = rank_products(zs, [A, V, T])
    torch.testing.assert_close(per_rank, torch.tensor([[[3.0 * 1 * 2], [2.0 * 5 * 3]]]))
    h, _ = low_rank_fusion(zs, [A, V, T], LAMBDA, BIAS)
    torch.testing.assert_close(h, torch.tensor([[1.0 * 6 + 0.5 * 30 + 0.25]]))  # 21.25


def test_factor_contraction_equals_tfn_tensor_product_with_the_equivalent_weight():
    W = full_rank_weight([A, V, T], LAMBDA)  # (2, 2, 2, 1)
    # W[i,j,k] = sum_r lambda_r A_r[i] V_r[j] T_r[k], two entries by hand
    assert float(W[0, 0, 0, 0]) == 1 * 1 * 1 * 1 + 0.5 * 0 * 2 * 4
    assert float(W[1, 0, 1, 0]) == 1 * 1 * 1 * -1 + 0.5 * 1 * 2 * 1
    Z = tensor_fusion(Z_A, Z_V, Z_T)  # TFN's Z, (1, 8)
    full = Z @ W.reshape(8, 1) + BIAS  # h = W . Z + b
    torch.testing.assert_close(full, torch.tensor([[21.25]]))
    # and on random embeddings, sizes and ranks, several outputs
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(3, d, generator=g) for d in (2, 3, 4)]
    factors = [torch.randn(4, d + 1, 2, generator=g) for d in (2, 3, 4)]
    lam, b = torch.randn(1, 4, generator=g), torch.randn(1, 2, generator=g)
    h, per_rank = low_rank_fusion([append_one(x) for x in z], factors, lam, b)
    W = full_rank_weight(factors, lam)  # (3, 4, 5, 2)
    torch.testing.assert_close(h, tensor_fusion(*z) @ W.reshape(-1, 2) + b)
    assert per_rank.shape == (3, 4, 2)


def test_model_output_is_the_low_rank_fusion_of_its_embeddings():
    model = LMF(tiny()).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        e = out.extras
        W = full_rank_weight(
            [model.audio_factor, model.vision_factor, model.text_factor], model.fusion_weights
        )
        Z = tensor_fusion(e["z_a"], e["z_v"], e["z_t"])
        expected = (Z @ W.reshape(Z.shape[1], 1) + model.fusion_bias).squeeze(-1)
    torch.testing.assert_close(out.pred, expected)


# --- the fusion weights train (issue 18) ------------------------------------------------------


def test_fusion_weights_and_bias_get_gradients_and_are_in_the_engines_optimiser():
    cfg = resolve_run_config("lmf", None, "quick", input_spec=DIMS_SPEC)
    model = LMF(cfg.model_cfg)
    batch = make_batch()
    model.loss(model(batch), batch)[0].backward()
    assert model.fusion_weights.grad.abs().sum() > 0 and model.fusion_bias.grad.abs().sum() > 0
    opt = build_optimizer(model, cfg)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(model.fusion_weights) in in_opt and id(model.fusion_bias) in in_opt
    before = model.fusion_weights.detach().clone()
    opt.step()
    assert not torch.equal(model.fusion_weights.detach(), before)
    # the reference's behaviour, on request: frozen, out of the optimiser
    frozen = LMF(tiny(train_fusion_weights=False))
    opt = build_optimizer(frozen, cfg)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(frozen.fusion_weights) not in in_opt and id(frozen.fusion_bias) not in in_opt


# --- masking and the contract -----------------------------------------------------------------


def test_padding_content_does_not_change_the_output_and_missing_lengths_mean_all_real():
    model = LMF(tiny()).eval()
    batch = make_batch()
    noisy = dict(batch)
    for m in DIMS:
        noisy[m] = batch[m].clone()
        noisy[m][torch.arange(5)[None, :] >= batch[f"{m}_len"][:, None]] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred)
        full = {k: v for k, v in batch.items() if not k.endswith("_len")}
        lens = {**full, **{f"{m}_len": torch.full((4,), 5) for m in DIMS}}
        torch.testing.assert_close(model(full).pred, model(lens).pred)


@pytest.mark.parametrize("t", [1, 5])
def test_forward_backward_regression_and_classification_with_masks(t):
    batch = make_batch(t=t)
    for m in DIMS:
        batch[f"{m}_len"][1] = 0  # a sample with no valid step in any modality
    model = LMF(tiny())
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.pred.shape == (4,)
    assert torch.isfinite(out.pred).all()
    total, parts = model.loss(out, batch)
    total.backward()
    assert set(parts) == {"loss/task", "loss/total"}
    assert model.text_factor.grad.abs().sum() > 0
    assert model.text_subnet.rnn.weight_ih_l0.grad.abs().sum() > 0
    cls = LMF(tiny(head="classification", num_classes=4))
    cbatch = make_batch(t=t, classes=4)
    cbatch["audio_len"][2] = 0
    out = cls(cbatch)
    assert out.pred.shape == (4, 4) and out.extras["fusion"].shape == (4, 2, 4)
    assert torch.isfinite(out.pred).all()
    cls.loss(out, cbatch)[0].backward()
    one = {k: v[:1] for k, v in batch.items()}  # a training batch of one: BatchNorm copes
    assert model(one).pred.shape == (1,)


def test_missing_modalities_and_bad_configs():
    batch = make_batch()
    model = LMF(tiny(vision_dim=0))
    batch.pop("vision"), batch.pop("vision_len")
    out = model(batch)
    assert out.extras["z_v"].shape == (4, 0) and model.vision_factor.shape == (2, 1, 1)
    with pytest.raises(ValueError, match="every \\*_dim is 0"):
        LMF(tiny(text_dim=0, audio_dim=0, vision_dim=0))
    with pytest.raises(ValueError, match="lmf.rank"):
        LMF(tiny(rank=0))
    with pytest.raises(ValueError, match="num_classes"):
        LMF(tiny(head="classification", num_classes=1))
    with pytest.raises(ValueError, match="lmf.audio_dropout"):
        LMF(tiny(audio_dropout=1.5))


# --- parity with thuiar/MMSA 2.2.1 -------------------------------------------------------------

# MMSA 2.2.1 (PyPI mmsa==2.2.1), models/singleTask/LMF.py with config/config_regression.json
# "lmf"/"mosi" and feature_dims (768, 5, 20): sum of p.numel() over parameters with
# requires_grad. No BERT is fine-tuned: nothing excluded. Its trainer (trains/singleTask/LMF.py)
# puts only list(model.parameters())[:3] and [5:] into Adam, leaving fusion_weights (1 x 3) and
# fusion_bias (1 x 1) untrained: it trains 505,067 = 505,071 - 4. We train all 505,071 (issue
# 18: the paper trains them); train_fusion_weights=False gives the reference's 505,067.
REFERENCE_TRAINABLE = {"regression": 505_071, "classification-4": 506_973}
REFERENCE_OPTIMISED = {"regression": 505_067}
# the reference's outputs for a batch of 2 at the same config (regression); its Feature_f is the
# per-rank products squeezed, (B, r); ours keeps the output axis, (B, r, 1)
REFERENCE_SHAPES = {
    "M": (2, 1),
    "Feature_t": (2, 64),
    "Feature_a": (2, 16),
    "Feature_v": (2, 128),
    "Feature_f": (2, 3),
}


def _mmsa_cfg(model_overrides=None, **input_spec):
    return resolve_run_config(
        "lmf", None, "mmsa", model_overrides=model_overrides, input_spec={**MOSI, **input_spec}
    )


def test_trainable_parameters_equal_the_reference_at_the_mmsa_preset():
    assert count_trainable_params(_mmsa_cfg()) == REFERENCE_TRAINABLE["regression"]
    cls = _mmsa_cfg(head="classification", num_classes=4)
    assert count_trainable_params(cls) == REFERENCE_TRAINABLE["classification-4"]
    frozen = _mmsa_cfg({"train_fusion_weights": False})
    assert count_trainable_params(frozen) == REFERENCE_OPTIMISED["regression"]


def test_output_keys_and_shapes_correspond_to_the_reference():
    model = LMF(_mmsa_cfg().model_cfg).eval()
    g = torch.Generator().manual_seed(1)
    mosi_dims = {"text": 768, "audio": 5, "vision": 20}
    batch = {m: torch.randn(2, 50, d, generator=g) for m, d in mosi_dims.items()}
    with torch.no_grad():
        out = model(batch)
    assert set(REFERENCE_OUTPUTS) == set(REFERENCE_SHAPES)
    for ref_key, ours in REFERENCE_OUTPUTS.items():
        got = out.pred.unsqueeze(-1) if ours == "pred" else out.extras[ours]
        if ref_key == "Feature_f":
            assert tuple(got.shape) == (2, 3, 1)
            got = got.squeeze(-1)
        assert tuple(got.shape) == REFERENCE_SHAPES[ref_key], ref_key
    assert set(out.extras) == set(REFERENCE_OUTPUTS.values()) - {"pred"}


# --- registry, presets and the engine ---------------------------------------------------------


def test_registered_with_presets_and_search_space():
    assert get_spec("lmf").model_cls is LMF
    assert {"mmsa", "paper", "quick"} <= set(SPEC.presets)
    for name, preset in SPEC.presets.items():
        apply_overrides(LMFConfig(), preset["model"], name)
        apply_overrides(TrainConfig(), preset["train"], name)
    assert SPEC.presets["mmsa"]["train"]["weight_decay"] == 0.005
    train_fields = set(TrainConfig.__dataclass_fields__)
    for key, p in SPEC.search_space.items():
        assert key in (train_fields if p.target == "train" else LMFConfig.__dataclass_fields__)


def _split(n: int, seed: int, t: int):
    from msaflow.feature_store.schema import SplitData

    rng = np.random.default_rng(seed)
    feats = {m: rng.standard_normal((n, t, d)).astype(np.float32) for m, d in DIMS.items()}
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=np.clip(feats["text"][:, 0, 0], -3, 3).astype(np.float32),
        features=feats,
        lengths=dict.fromkeys(DIMS, rng.integers(0, t + 1, n)),
    )


def test_trains_through_the_engine():
    from msaflow.tasks.train import train_model

    spec = {"text_dim": 6, "audio_dim": 3, "vision_dim": 4, "seq_len": 4}
    cfg = resolve_run_config(
        "lmf", None, "quick", train_overrides={"epochs": 2, "batch_size": 15}, input_spec=spec
    )
    splits = {"train": _split(31, 0, 4), "valid": _split(8, 1, 4), "test": _split(8, 2, 4)}
    result = train_model(cfg, splits)
    assert np.isfinite(result.test["test/mae"])
