"""MMCL: every equation on hand-made tensors, then the model's contract, variants and training."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest
import torch

from msaflow.models.base import ModelOutput
from msaflow.models.mmcl import (
    MMCL,
    SPEC,
    MMCLConfig,
    aligned_inputs,
    common_weights,
    cosine_similarity_matrix,
    decouple,
    info_nce,
    masked_pool,
    normalise_weights,
    raw_common_weights,
)
from msaflow.tasks.config import TrainConfig, apply_overrides

S = 1 / math.sqrt(2)
DIMS = {"text": 6, "audio": 5, "vision": 4}


def tiny(**kw) -> MMCLConfig:
    base = dict(
        text_dim=DIMS["text"],
        audio_dim=DIMS["audio"],
        vision_dim=DIMS["vision"],
        seq_len=7,
        d=8,
        heads=2,
        ff_mult=2,
        head_hidden=8,
        dropout=0.0,
    )
    return MMCLConfig(**{**base, **kw})


def make_batch(b: int = 4, t: int = 7, classes: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(b, t, d, generator=g) for m, d in DIMS.items()}
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    lengths[0] = t
    for m in DIMS:
        batch[f"{m}_len"] = lengths.clone()
    batch["label"] = torch.randn(b, generator=g)
    if classes:
        batch["class_label"] = torch.randint(0, classes, (b,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


def t2(rows) -> torch.Tensor:
    """A (1, L, d) batch of one hand-written sequence."""
    return torch.tensor([rows], dtype=torch.float32)


# ---- III.B equations ----------------------------------------------------------------------


def test_cosine_similarity_matrix_of_known_vectors():
    za = t2([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    zb = t2([[1.0, 1.0], [0.0, -2.0], [3.0, 0.0]])
    expected = torch.tensor([[[S, 0.0, 1.0], [S, -1.0, 0.0], [0.0, 0.0, 0.0]]])  # zero row -> 0
    sim = cosine_similarity_matrix(za, zb)
    assert sim.shape == (1, 3, 3)
    torch.testing.assert_close(sim, expected)
    torch.testing.assert_close(cosine_similarity_matrix(zb, za), expected.transpose(1, 2))


def test_common_weights_are_the_min_over_the_other_two_modalities():
    z = {
        "text": t2([[1.0, 0.0], [0.0, 1.0]]),
        "audio": t2([[1.0, 0.0], [1.0, 0.0]]),
        "vision": t2([[0.0, 1.0], [1.0, 1.0]]),
    }
    # by hand: Sim_ta = [[1,1],[0,0]], Sim_tv = [[0,S],[1,S]], Sim_av = [[0,S],[0,S]]
    raw = raw_common_weights(z)
    torch.testing.assert_close(raw["text"], torch.tensor([[[0.0, S], [0.0, 0.0]]]))
    torch.testing.assert_close(raw["audio"], torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]))
    torch.testing.assert_close(raw["vision"], torch.tensor([[[0.0, 0.0], [S, S]]]))
    # "none" keeps the paper's raw weights; softmax normalises each row
    none = common_weights(z, norm="none")
    torch.testing.assert_close(none["vision"], raw["vision"])
    soft = common_weights(z)
    e = math.exp(S)
    torch.testing.assert_close(
        soft["text"], torch.tensor([[[1 / (1 + e), e / (1 + e)], [0.5, 0.5]]])
    )


def test_normalise_weights_softmax_temperature_and_padding():
    raw = torch.tensor([[[0.0, math.log(3.0)], [0.2, -0.4]]])
    torch.testing.assert_close(
        normalise_weights(raw),
        torch.tensor([[[0.25, 0.75], [0.5 * (1 + math.tanh(0.3)), 0.5 * (1 - math.tanh(0.3))]]]),
    )
    torch.testing.assert_close(
        normalise_weights(raw[:, :1], temperature=0.5), torch.tensor([[[0.1, 0.9]]])
    )
    keys = torch.tensor([[True, False]])
    torch.testing.assert_close(
        normalise_weights(raw, keys), torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    )
    none = normalise_weights(raw, keys, norm="none")
    torch.testing.assert_close(none, torch.tensor([[[0.0, 0.0], [0.2, 0.0]]]))
    # a sample with no real step: zero weights, not NaN
    assert torch.equal(normalise_weights(raw, torch.tensor([[False, False]])), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="w_norm"):
        normalise_weights(raw, norm="l1")


def test_decouple_is_a_matrix_product_over_time_and_splits_z_exactly():
    w = torch.tensor([[[0.25, 0.75], [1.0, 0.0]]])
    z = t2([[4.0, 0.0], [0.0, 8.0]])
    zc, zs = decouple(z, w)
    torch.testing.assert_close(zc, t2([[1.0, 6.0], [4.0, 0.0]]))  # W Z
    torch.testing.assert_close(zs, t2([[3.0, -6.0], [-4.0, 8.0]]))  # (I - W) Z
    torch.testing.assert_close(zc + zs, z)
    big = torch.randn(3, 5, 4)
    wc = common_weights({"t": big, "a": torch.randn(3, 5, 4), "v": torch.randn(3, 5, 4)})["t"]
    zc, zs = decouple(big, wc)
    torch.testing.assert_close(zc + zs, big)


def test_decouple_with_csd_off_returns_z_for_both_parts():
    z = torch.randn(2, 3, 4)
    zc, zs = decouple(z, None)
    assert zc is z and zs is z


# ---- III.E contrastive term ------------------------------------------------------------------


def test_info_nce_exact_2x2_values():
    a = torch.eye(2)
    aligned = info_nce(a, a.clone(), temperature=0.1)
    swapped = info_nce(a, a.flip(0), temperature=0.1)
    # logits diag 1/tau, off-diag 0: -log(e^10 / (e^10 + 1)) = log(1 + e^-10)
    # float32 logsumexp around 10 resolves about 1e-6
    assert aligned.item() == pytest.approx(math.log1p(math.exp(-10.0)), abs=1e-6)
    assert swapped.item() == pytest.approx(math.log1p(math.exp(10.0)), rel=1e-6)
    assert aligned.item() < 1e-4


def test_info_nce_aligned_pairs_beat_shuffled_pairs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g)
    b = a + 0.05 * torch.randn(16, 32, generator=g)
    assert info_nce(a, b, 0.1) < 0.1 < info_nce(a, b[torch.randperm(16, generator=g)], 0.1)
    assert info_nce(a, b, 0.1) == pytest.approx(info_nce(b, a, 0.1).item())  # symmetric


# ---- inputs ------------------------------------------------------------------------------------


def test_unaligned_sequences_raise_a_clear_error():
    batch = make_batch()
    batch["audio"] = torch.randn(4, 9, DIMS["audio"])
    with pytest.raises(ValueError, match="aligned sequences") as err:
        MMCL(tiny())(batch)
    assert all(
        f"{m} T={t}" in str(err.value) for m, t in (("text", 7), ("audio", 9), ("vision", 7))
    )


def test_interpolate_resamples_to_the_longest_sequence():
    batch = make_batch()
    batch["audio"] = torch.arange(3.0).reshape(1, 3, 1).expand(4, 3, DIMS["audio"]).contiguous()
    batch["audio_len"] = torch.tensor([3, 2, 1, 0])
    feats, lengths = aligned_inputs(batch, ("vision", "audio", "text"), "interpolate")
    assert feats["audio"].shape == (4, 7, DIMS["audio"])
    assert lengths["audio"].tolist() == [7, 5, 3, 0]  # ceil(len * 7 / 3)
    assert feats["audio"][0, 0, 0] == 0.0 and feats["audio"][0, -1, 0] == 2.0
    out = MMCL(tiny(align="interpolate"))(batch)
    assert out.pred.shape == (4,) and torch.isfinite(out.pred).all()


def test_masked_pool_ignores_padding():
    x = t2([[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_pool(x, mask, "mean"), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(masked_pool(x, mask, "max"), torch.tensor([[3.0, 5.0]]))
    assert torch.equal(
        masked_pool(x, torch.zeros(1, 3, dtype=torch.bool), "max"), torch.zeros(1, 2)
    )


# ---- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(SPEC.variants))
@pytest.mark.parametrize("head", ["regression", "classification"])
def test_every_variant_runs_forward_and_backward(variant, head):
    cfg = apply_overrides(tiny(), SPEC.variants[variant], variant)
    if head == "classification":
        cfg = replace(cfg, head="classification", num_classes=4)
    torch.manual_seed(0)
    model = MMCL(cfg)
    batch = make_batch(classes=4 if head == "classification" else 0)
    out = model(batch)
    assert out.pred.shape == ((4,) if head == "regression" else (4, 4))
    total, parts = model.loss(out, batch)
    assert set(parts) == {"loss/task", "loss/cl", "loss/total"}
    # 0-dim tensors, detached, left on the device: the engine reads them once per epoch
    assert all(v.dim() == 0 and not v.requires_grad for v in parts.values())
    parts = {k: float(v) for k, v in parts.items()}
    assert all(math.isfinite(v) for v in parts.values())
    assert parts["loss/total"] == pytest.approx(
        parts["loss/task"] + cfg.lambda_cl * parts["loss/cl"], rel=1e-5
    )
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.proj["audio"].proj.weight.grad.abs().sum() > 0  # every modality is trained


@pytest.mark.parametrize(
    "override",
    [
        {"enhance": "sequential"},
        {"w_norm": "none"},
        {"pool": "max"},
        {"fusion": "sum"},
        {"cl_on": "enhanced"},
        {"cross_residual": False},
        {"positional": True},
        {"input_norm": False},
        {"head_hidden": 0},
        {"self_attn": False, "enhance": "sequential"},
    ],
)
def test_config_choices_run(override):
    model = MMCL(tiny(**override))
    batch = make_batch()
    total, _ = model.loss(model(batch), batch)
    total.backward()
    assert math.isfinite(total.item())


def test_shared_blocks_share_parameters():
    own, shared = MMCL(tiny()), MMCL(tiny(share_blocks=True))
    assert shared.enhance["text"] is shared.enhance["audio"]
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(shared) < n(own)


def test_csd_off_keeps_common_equal_to_the_projection_and_on_changes_it():
    batch = make_batch()
    for csd in (False, True):
        model = MMCL(tiny(csd=csd, cl_on="common")).eval()
        with torch.no_grad():
            out = model(batch)
            mask = torch.arange(7)[None, :] < batch["text_len"][:, None]
            z = masked_pool(model.proj["text"](batch["text"]), mask)
        assert torch.allclose(out.extras["cl_text"], z, atol=1e-6) is (not csd)


def test_padding_content_does_not_change_the_prediction():
    model = MMCL(tiny()).eval()
    batch = make_batch()
    noisy = {k: v.clone() for k, v in batch.items()}
    for m in DIMS:
        pad = torch.arange(7)[None, :] >= batch[f"{m}_len"][:, None]
        noisy[m][pad] = 1e3
    assert (batch["text_len"] < 7).any()
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred)


def test_epoch_trace_reports_common_weight_statistics():
    model = MMCL(tiny())
    assert model.on_epoch_end(0) == {}
    model.train()
    model(make_batch())
    model(make_batch(seed=1))
    trace = model.on_epoch_end(0)
    assert set(trace) == {
        f"csd/{k}_{s}" for k in ("w_mean", "common_ratio", "w_tv_uniform") for s in "tav"
    }
    assert all(0.0 <= trace[f"csd/w_tv_uniform_{s}"] < 1.0 for s in "tav")
    assert all(-1.0 <= trace[f"csd/w_mean_{s}"] <= 1.0 for s in "tav")
    assert model.on_epoch_end(1) == {}  # reset after each epoch
    model.eval()
    model(make_batch())
    assert model.on_epoch_end(2) == {}  # evaluation passes are not counted
    off = MMCL(tiny(csd=False))
    off(make_batch())
    assert off.on_epoch_end(0) == {}


def test_invalid_configs_fail_clearly():
    with pytest.raises(ValueError, match="divisible"):
        MMCL(tiny(d=9))
    with pytest.raises(ValueError, match="num_classes"):
        MMCL(tiny(head="classification", num_classes=1))
    with pytest.raises(ValueError, match="all three"):
        MMCL(tiny(audio_dim=0))
    batch = make_batch()
    del batch["vision"]
    with pytest.raises(ValueError, match="lacks"):
        MMCL(tiny())(batch)


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_a_short_training_loop_lowers_the_loss(head):
    torch.manual_seed(0)
    classes = 4 if head == "classification" else 0
    batch = make_batch(b=16, classes=classes, seed=3)
    if head == "regression":
        batch["label"] = batch["text"][:, 0, :2].sum(-1)  # learnable from the inputs
    cfg = tiny(head=head, num_classes=classes or 1)
    model = MMCL(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        total, parts = model.loss(model(batch), batch)
        total.backward()
        opt.step()
        losses.append(parts["loss/total"])
    assert losses[-1] < 0.6 * losses[0]


# ---- SPEC -----------------------------------------------------------------------------------


def test_spec_variants_and_presets_apply_to_the_configs():
    assert SPEC.name == "mmcl" and SPEC.config_cls is MMCLConfig and SPEC.model_cls is MMCL
    assert list(SPEC.variants) == ["full", "no_csd", "no_selfattn", "no_crossattn"]  # Table I
    assert SPEC.default_variant == "full"
    assert {"lambda_cl", "temperature", "csd", "self_attn", "cross_attn"} <= {
        f.name for f in fields(MMCLConfig)
    }
    for name, preset in SPEC.presets.items():
        cfg = apply_overrides(MMCLConfig(), preset["model"], name)
        train = apply_overrides(TrainConfig(), preset["train"], name)
        assert cfg.d % cfg.heads == 0
        assert train.optimizer == "adam"
    assert SPEC.presets["paper"]["train"] == {
        "optimizer": "adam",
        "lr": 3e-4,
        "batch_size": 64,
        "epochs": 200,
    }
    assert SPEC.presets["paper_cls"]["train"]["batch_size"] == 128
    assert MMCLConfig().d == 256
    assert isinstance(MMCL(tiny())(make_batch()), ModelOutput)


# ---- through the shared engine ----------------------------------------------------------------


def _split(n: int, seed: int):
    import numpy as np

    from msaflow.feature_store.schema import SplitData

    rng = np.random.default_rng(seed)
    feats = {m: rng.standard_normal((n, 7, d)).astype(np.float32) for m, d in DIMS.items()}
    lengths = rng.integers(3, 8, n)
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=np.clip(feats["text"][:, 0, 0] * 2, -3, 3).astype(np.float32),
        features=feats,
        lengths=dict.fromkeys(DIMS, lengths),
    )


def test_trains_through_the_engine_with_the_quick_preset():
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import train_model

    spec = {"text_dim": 6, "audio_dim": 5, "vision_dim": 4, "seq_len": 7}
    cfg = resolve_run_config(
        "mmcl", "full", "quick", train_overrides={"epochs": 2, "batch_size": 16}, input_spec=spec
    )
    assert cfg.model_cfg.d == 32 and cfg.train.lr == 1e-3
    result = train_model(
        cfg, {"train": _split(48, 0), "valid": _split(16, 1), "test": _split(16, 2)}
    )
    assert {"train/loss/task", "train/loss/cl", "train/loss/total"} <= set(result.history[0])
    assert "test/mae" in result.test
    assert [r["epoch"] for r in result.epoch_traces] == [0, 1]
    assert "csd/w_mean_t" in result.epoch_traces[0]


# ---- utterance-level input (T=1) --------------------------------------------------------------


def _t1_batch(b: int = 4, classes: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(b, 1, d, generator=g) for m, d in DIMS.items()}
    for m in DIMS:
        batch[f"{m}_len"] = torch.ones(b, dtype=torch.long)
    batch["label"] = torch.randn(b, generator=g)
    if classes:
        batch["class_label"] = torch.randint(0, classes, (b,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


def test_t1_softmax_csd_is_the_trivial_split_and_none_keeps_one():
    """Documented: at T=1 a softmax row of W^c has one entry, so Z^c = Z and Z^s = 0."""
    g = torch.Generator().manual_seed(1)
    z = {m: torch.randn(4, 1, 8, generator=g) for m in ("vision", "audio", "text")}
    w = common_weights(z, norm="softmax")
    zc, zs = decouple(z["text"], w["text"])
    torch.testing.assert_close(zc, z["text"])
    assert torch.count_nonzero(zs) == 0
    raw = common_weights(z, norm="none")["text"]  # (B, 1, 1) min-cosine
    zc, zs = decouple(z["text"], raw)
    torch.testing.assert_close(zc, raw * z["text"])
    assert torch.count_nonzero(zs) > 0


@pytest.mark.parametrize("w_norm", ["softmax", "none"])
@pytest.mark.parametrize("classes", [0, 3])
def test_t1_runs_through_every_block(w_norm, classes):
    cfg = tiny(
        seq_len=1,
        w_norm=w_norm,
        enhance="sequential",
        **({"head": "classification", "num_classes": classes} if classes else {}),
    )
    model = MMCL(cfg)
    batch = _t1_batch(classes=classes)
    out = model(batch)
    assert out.pred.shape == ((4, classes) if classes else (4,))
    total, parts = model.loss(out, batch)
    assert math.isfinite(parts["loss/cl"])
    total.backward()
    trace = model.on_epoch_end(0)
    if w_norm == "softmax":
        assert trace["csd/common_ratio_t"] == pytest.approx(1.0)  # the trivial split, as documented
        assert trace["csd/w_tv_uniform_t"] == pytest.approx(0.0)  # one key: W^c = 1, uniform
    assert all(math.isfinite(v) for v in trace.values())


def test_common_weight_distance_from_uniform_on_hand_made_weights():
    model = MMCL(tiny())
    steps = torch.tensor([[True, True, False]])  # third step is padding
    rows = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]])  # (1, 3, 3)
    z = {m: torch.ones(1, 3, 4) for m in ("text", "audio", "vision")}
    w = dict.fromkeys(z, rows)
    model._accumulate(dict(w), w, z, dict(z), steps)
    trace = model.on_epoch_end(0)
    # row 0: 0.5 * (|1 - .5| + |0 - .5|) = 0.5; row 1: uniform, 0; the padded row is not counted
    assert trace["csd/w_tv_uniform_t"] == pytest.approx(0.25)
