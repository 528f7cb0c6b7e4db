"""MulT: crossmodal attention direction (eqs. 1-2), key padding masks, the causal flag, eq. 3's
convolutions, the last-element pooling, heads, parity with MMSA 2.2.1, registry and engine."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from msaflow.models import get_spec
from msaflow.models.mult import (
    SPEC,
    CrossmodalTransformer,
    MulT,
    MulTConfig,
    MultiheadCrossAttention,
    TemporalConv,
    future_mask,
    last_valid,
    sinusoidal_embedding,
)
from msaflow.tasks.config import TrainConfig, apply_overrides, resolve_run_config

DIMS = {"text": 6, "audio": 3, "vision": 4}


def tiny(**kw) -> MulTConfig:
    base = dict(
        text_dim=6,
        audio_dim=3,
        vision_dim=4,
        hidden=4,
        heads=2,
        layers=1,
        self_layers=1,
        conv_kernel_t=3,
        conv_kernel_a=3,
        conv_kernel_v=3,
    )
    return MulTConfig(**{**base, **kw})


def make_batch(b: int = 4, t=(5, 7, 3), classes: int = 0, seed: int = 0, zero_row: bool = True):
    """Unaligned by default (T = 5 / 7 / 3); row 0 full length, row 1 has no audio step."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for (m, d), T in zip(DIMS.items(), t, strict=True):
        batch[m] = torch.randn(b, T, d, generator=g)
        lengths = torch.randint(1, T + 1, (b,), generator=g)
        lengths[0] = T
        batch[f"{m}_len"] = lengths
    if zero_row and b > 1:
        batch["audio_len"][1] = 0
    batch["label"] = torch.randn(b, generator=g)
    if classes:
        batch["class_label"] = torch.randint(0, classes, (b,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


def _identity_attention(d: int = 2) -> MultiheadCrossAttention:
    """One head with W_Q = W_K = W_V = I, zero biases, out_proj = I: CM is the bare eq. 2."""
    attn = MultiheadCrossAttention(d, 1, dropout=0.0)
    with torch.no_grad():
        attn.in_proj_weight.copy_(torch.cat([torch.eye(d)] * 3))
        attn.in_proj_bias.zero_()
        attn.out_proj.weight.copy_(torch.eye(d))
        attn.out_proj.bias.zero_()
    return attn.eval()


# --- eqs. 1-2: queries from the target, keys and values from the source ---------------------------


def test_crossmodal_attention_is_softmax_of_target_queries_on_source_keys_on_hand_made_tensors():
    attn = _identity_attention()
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # X_alpha, T_alpha = 2
    source = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # X_beta, T_beta = 3
    out, w = attn(target, source, source, need_weights=True)
    assert out.shape == (1, 2, 2)  # the target's length, not the source's
    scores = target[0] @ source[0].T / math.sqrt(2)  # (2, 3): Q_alpha K_beta^T / sqrt(d_k)
    expected_w = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(w[0, 0], expected_w)
    torch.testing.assert_close(out[0], expected_w @ source[0])  # ... V_beta
    # by hand for the first query: scores (2, 0, 1) / sqrt 2
    e = torch.exp(torch.tensor([2.0, 0.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(w[0, 0, 0], e / e.sum())
    # the source drives the output; the queries only choose among the source's values
    moved = source.clone()
    moved[0, 1] = torch.tensor([5.0, -5.0])
    assert not torch.allclose(attn(target, moved, moved)[0], out)
    other_target = torch.tensor([[[3.0, 3.0], [-1.0, 0.0]]])
    out2, _ = attn(other_target, source, source)
    assert torch.all(out2.min(1).values >= source.min(1).values - 1e-6)  # convex mixes of V_beta


def test_crossmodal_transformer_output_has_the_targets_length_and_depends_on_the_source():
    torch.manual_seed(0)
    cm = CrossmodalTransformer(4, 2, 2, 0.0, 0.0, 0.0, 0.0).eval()
    target, source = torch.randn(2, 5, 4), torch.randn(2, 9, 4)
    out = cm(target, source, torch.ones(2, 9, dtype=torch.bool))
    assert out.shape == (2, 5, 4)
    changed = source.clone()
    changed[:, 3] = torch.tensor([2.0, -1.0, 0.5, 3.0])  # not a uniform shift, which LN removes
    assert not torch.allclose(cm(target, changed, torch.ones(2, 9, dtype=torch.bool)), out)


def test_each_branch_attends_from_its_target_to_the_other_modalities():
    model = MulT(tiny()).eval()
    assert set(model.crossmodal) == {"a_to_t", "v_to_t", "t_to_a", "v_to_a", "t_to_v", "a_to_v"}
    assert model.sources("t") == ("a", "v") and model.sources("v") == ("t", "a")
    batch = make_batch(zero_row=False)
    feats, masks = model.encode(batch)
    for name, cm in model.crossmodal.items():
        s, t = name.split("_to_")
        assert cm(feats[t], feats[s], masks[s]).shape == feats[t].shape  # (B, T_t, d)
    # changing only vision changes the text branch (through V -> L)
    with torch.no_grad():
        base = model(batch).extras["feature_t"]
        other = dict(batch, vision=batch["vision"] + 1.0)
        assert not torch.allclose(model(other).extras["feature_t"], base)


# --- masks ----------------------------------------------------------------------------------------


def test_padded_source_steps_get_zero_weight_and_their_values_do_not_matter():
    attn = _identity_attention()
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 0.0]]])
    source = torch.tensor(
        [[[1.0, 2.0], [3.0, 0.0], [9.0, 9.0]], [[0.0, 1.0], [7.0, 7.0], [7.0, 7.0]]]
    )
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out, w = attn(target, source, source, key_mask=mask, need_weights=True)
    assert torch.all(w[0, :, :, 2] == 0) and torch.all(w[1, :, :, 1:] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 1, 2))
    torch.testing.assert_close(out[1], source[1, :1].expand(2, 2))  # one valid key: its value
    noisy = source.clone()
    noisy[~mask] = 1e4
    torch.testing.assert_close(attn(target, noisy, noisy, key_mask=mask)[0], out)
    # a row with no valid source step: zero weights, a zero (bias-only) output, no NaN
    none = torch.tensor([[True, True, True], [False, False, False]])
    out0, w0 = attn(target, source, source, key_mask=none, need_weights=True)
    assert torch.all(w0[1] == 0) and torch.all(out0[1] == 0) and torch.isfinite(out0).all()


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_the_explicit_equation(causal):
    torch.manual_seed(0)
    attn = MultiheadCrossAttention(6, 3, dropout=0.0).eval()
    query, source = torch.randn(3, 4, 6), torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    for km in (None, mask):
        fused, none = attn(query, source, source, key_mask=km, causal=causal)
        explicit, w = attn(query, source, source, key_mask=km, causal=causal, need_weights=True)
        assert none is None and w.shape == (3, 3, 4, 5)
        torch.testing.assert_close(fused, explicit)
    self_fused, _ = attn(query, query, query, causal=causal)  # the one-matmul self path
    self_explicit, _ = attn(query, query.clone(), query.clone(), causal=causal, need_weights=True)
    torch.testing.assert_close(self_fused, self_explicit)


def test_padding_content_does_not_change_the_model_output():
    model = MulT(tiny()).eval()
    batch = make_batch()
    noisy = dict(batch)
    for m in DIMS:
        T = batch[m].shape[1]
        noisy[m] = batch[m].clone()
        noisy[m][torch.arange(T)[None, :] >= batch[f"{m}_len"][:, None]] = 1e3
    with torch.no_grad():
        out, out_noisy = model(batch), model(noisy)
    torch.testing.assert_close(out_noisy.pred, out.pred)
    for k, v in out.extras.items():
        torch.testing.assert_close(out_noisy.extras[k], v)


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"causal_mask": True},
        {"pool": "mean"},
        {"conv_padding": "valid", "position_embedding": False},
        {"attn_dropout_t": 0.0, "attn_dropout_a": 0.0, "attn_dropout_self": 0.0},  # all fused
    ],
)
def test_full_lengths_skip_the_masks_bit_for_bit(monkeypatch, over):
    """Issue 18: lengths that are all full give the mask None (no mask work); checked against the
    all-True masks the model built before: the prediction, the features and every gradient equal
    bit for bit (torch.equal), in training mode with dropout (same seed) and in eval mode."""
    import msaflow.models.mult as mult

    dropouts = dict(
        text_dropout=0.1,
        embed_dropout=0.1,
        attn_dropout_t=0.2,
        attn_dropout_a=0.1,
        attn_dropout_v=0.0,  # this source takes the fused kernel in training too
        attn_dropout_self=0.2,
    )
    cfg = tiny(hidden=8, heads=2, layers=2, self_layers=2, **{**dropouts, **over})
    torch.manual_seed(0)
    model = MulT(cfg)
    batch = make_batch(b=5, t=(6, 6, 6), zero_row=False)
    for m in DIMS:
        batch[f"{m}_len"] = torch.full((5,), 6)
    batch["audio_len"][2] = 9  # longer than T counts as full, as length_mask has it

    def run(force_masks: bool, train: bool):
        with monkeypatch.context() as mp:
            if force_masks:  # the all-True masks of before
                mp.setattr(mult, "all_full", lambda lengths, T: False)
            model.train(train)
            model.zero_grad()
            torch.manual_seed(1)
            out = model(batch)
            model.loss(out, batch)[0].backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out, grads

    for train in (True, False):
        (fast, g_fast), (masked, g_masked) = run(False, train), run(True, train)
        assert torch.equal(fast.pred, masked.pred)
        for k, v in fast.extras.items():
            assert torch.equal(v, masked.extras[k]), k
        assert len(g_fast) == len(g_masked)
        for a, b in zip(g_fast, g_masked, strict=True):
            assert torch.equal(a, b)
    feats, masks = model.encode(batch)
    assert all(v is None for v in masks.values())  # nothing masked, nothing built
    short = dict(batch, text_len=batch["text_len"].clone())
    short["text_len"][1] = 3
    assert model.encode(short)[1]["t"] is not None  # a shorter row keeps its mask


def test_last_valid_takes_each_rows_last_real_step():
    x = torch.tensor(
        [[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]], [[3.0, 3.0], [9.0, 9.0], [9.0, 9.0]]]
        + [[[5.0, 6.0], [7.0, 8.0], [4.0, 4.0]]]
    )
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    out = last_valid(x, mask)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0], [3.0, 3.0], [0.0, 0.0]]))


# --- the causal flag (off by default, as the paper; on: the reference's mask) ---------------------


def test_future_mask_is_the_references_rule():
    # aligned: the strict upper triangle is hidden
    torch.testing.assert_close(future_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).triu(1))
    # unaligned: query i sees keys j <= i + |T_k - T_q| (buffered_future_mask's triu offset)
    expected = torch.tensor([[False, False, True, True], [False, False, False, True], [False] * 4])
    torch.testing.assert_close(future_mask(3, 4), expected)
    assert not future_mask(4, 2).any()


def test_causal_flag_hides_future_source_steps_and_is_off_by_default():
    assert MulTConfig().causal_mask is False
    attn = _identity_attention()
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    source = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.0, 4.0]]])
    out, w = attn(target, source, source, causal=True, need_weights=True)
    torch.testing.assert_close(w[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # step 0 sees only 0
    assert torch.all(w[0, 0].triu(1) == 0)
    changed = source.clone()
    changed[0, 2] = torch.tensor([-8.0, 8.0])  # the last step: only the last query may see it
    out_c, _ = attn(target, changed, changed, causal=True)
    torch.testing.assert_close(out_c[0, :2], out[0, :2])
    assert not torch.allclose(out_c[0, 2], out[0, 2])
    out_full, _ = attn(target, changed, changed)  # no causal mask: every query sees the change
    assert not torch.allclose(out_full[0, 0], attn(target, source, source)[0][0, 0])


def test_causal_flag_reaches_the_models_attention_layers():
    torch.manual_seed(0)
    plain = MulT(tiny()).eval()
    causal = MulT(tiny(causal_mask=True)).eval()
    causal.load_state_dict(plain.state_dict())
    batch = make_batch(t=(4, 4, 4), zero_row=False)
    with torch.no_grad():
        assert not torch.allclose(plain(batch).pred, causal(batch).pred)
        # A -> L, causally: the first text step reads no later audio step. Kernel 3 "same": the
        # convolution's step 0 reads input steps 0-1 only, so change steps 2 and on.
        later = dict(batch, text=batch["text"].clone(), audio=batch["audio"].clone())
        later["text"][:, 2:] += 5.0
        later["audio"][:, 2:] += 5.0
        full = {k: v for k, v in batch.items() if not k.endswith("_len")}
        full_later = {k: v for k, v in later.items() if not k.endswith("_len")}
        outs = []
        for b in (full, full_later):
            feats, masks = causal.encode(b)
            outs.append(causal.crossmodal["a_to_t"](feats["t"], feats["a"], masks["a"], True))
        torch.testing.assert_close(outs[0][:, 0], outs[1][:, 0])
        assert not torch.allclose(outs[0][:, 3], outs[1][:, 3])


# --- eq. 3 and the positional embedding -----------------------------------------------------------


def test_temporal_convolution_keeps_length_same_and_shrinks_it_valid():
    x, mask = torch.randn(2, 6, 3), torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    same = TemporalConv(3, 5, 3, "same")
    h, m = same(x, mask)
    assert h.shape == (2, 6, 5) and torch.equal(m, mask)
    valid = TemporalConv(3, 5, 3, "valid")
    h, m = valid(x, mask)
    assert h.shape == (2, 4, 5)
    torch.testing.assert_close(m.sum(1), torch.tensor([4, 2]))  # lengths shrink by k - 1
    with pytest.raises(ValueError, match="conv_padding='valid'"):
        valid(torch.randn(2, 1, 3), torch.ones(2, 1, dtype=torch.bool))
    assert same.conv.bias is None


def test_sinusoidal_embedding_by_hand():
    pe = sinusoidal_embedding(3, 5)  # half = 2 -> w = (1, 1e-4); odd d: a zero last channel
    p = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.stack(
        [torch.sin(p), torch.sin(p * 1e-4), torch.cos(p), torch.cos(p * 1e-4), torch.zeros(3)], 1
    )
    torch.testing.assert_close(pe, expected)
    assert not list(MulT(tiny()).buffers())  # the embedding is no parameter and no state


# --- heads, hooks, variants ---------------------------------------------------------------------


@pytest.mark.parametrize("t", [(1, 1, 1), (5, 7, 3)])
def test_regression_and_classification_with_masks_zero_length_rows_and_t1(t):
    reg = MulT(tiny())
    batch = make_batch(t=t)
    out = reg(batch)
    assert out.pred.shape == (4,) and torch.isfinite(out.pred).all()
    total, parts = reg.loss(out, batch)
    total.backward()
    assert set(parts) == {"loss/task", "loss/total"}
    assert all(torch.isfinite(p.grad).all() for p in reg.parameters() if p.grad is not None)
    cls = MulT(tiny(head="classification", num_classes=3, pool="mean"))
    batch = make_batch(t=t, classes=3)
    out = cls(batch)
    assert out.pred.shape == (4, 3)
    cls.loss(out, batch)[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in cls.parameters() if p.grad is not None)
    # no lengths at all: every step is real
    nolen = {k: v for k, v in batch.items() if not k.endswith("_len")}
    assert torch.isfinite(cls(nolen).pred).all()


def test_grad_clip_value_clips_every_entry_after_backward():
    model = MulT(tiny(grad_clip_value=1e-3))
    batch = make_batch()
    out = model(batch)
    (model.loss(out, batch)[0] * 1e3).backward()
    assert model.after_backward(out, batch, 0) == {}
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert max(float(g.abs().max()) for g in grads) <= 1e-3 + 1e-9


def test_single_target_ablation_and_ln_residual():
    model = MulT(tiny(targets="t"))
    assert set(model.crossmodal) == {"a_to_t", "v_to_t"} and set(model.self_attn) == {"t"}
    out = model(make_batch())
    assert out.extras["feature_f"].shape == (4, 8) and set(out.extras) == {
        "feature_t",
        "feature_f",
    }
    torch.manual_seed(0)
    a = MulT(tiny()).eval()
    b = MulT(tiny(ln_residual=True)).eval()
    b.load_state_dict(a.state_dict())
    batch = make_batch()
    with torch.no_grad():
        assert not torch.allclose(a(batch).pred, b(batch).pred)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="mult.hidden"):
        MulT(tiny(hidden=5))
    with pytest.raises(ValueError, match="mult.targets"):
        MulT(tiny(targets="tx"))
    with pytest.raises(ValueError, match="mult.embed_dropout"):
        MulT(tiny(embed_dropout=1.0))
    with pytest.raises(ValueError, match="num_classes"):
        MulT(tiny(head="classification", num_classes=1))
    with pytest.raises(ValueError, match="at least two modalities"):
        MulT(tiny(audio_dim=0, vision_dim=0))
    two = MulT(tiny(vision_dim=0))  # a dataset without vision: t <-> a only
    assert set(two.crossmodal) == {"a_to_t", "t_to_a"}
    batch = {k: v for k, v in make_batch().items() if not k.startswith("vision")}
    assert two(batch).extras["feature_f"].shape == (4, 8)


# --- parity with MMSA 2.2.1 -----------------------------------------------------------------------


def _mmsa_mosi(head: str = "regression", num_classes: int = 1) -> MulTConfig:
    cfg = apply_overrides(MulTConfig(), SPEC.presets["mmsa"]["model"], "mmsa")
    mosi = dict(text_dim=768, audio_dim=5, vision_dim=20, seq_len=50)
    return dataclasses.replace(cfg, **mosi, head=head, num_classes=num_classes)


def test_parameter_count_equals_mmsa_2_2_1_at_the_mmsa_preset():
    # thuiar/MMSA 2.2.1 (PyPI mmsa==2.2.1), models/singleTask/MULT.py with
    # models/subNets/transformers_encoder/, built from config_regression.json "mult"/"mosi" with
    # feature_dims (768, 5, 20): 2,571,551 trainable parameters (use_bert false: no BERT inside,
    # nothing excluded); 2,572,454 with a 4-class head
    n = sum(p.numel() for p in MulT(_mmsa_mosi()).parameters() if p.requires_grad)
    assert n == 2_571_551
    cls = MulT(_mmsa_mosi("classification", 4))
    assert sum(p.numel() for p in cls.parameters() if p.requires_grad) == 2_572_454


def test_output_keys_and_shapes_correspond_to_the_reference():
    # reference: {"M": (B, 1), "Feature_t"/"Feature_a"/"Feature_v": (B, 100), "Feature_f": (B, 300)}
    # at MOSI's shapes (aligned, T=50, 768/5/20)
    model = MulT(_mmsa_mosi()).eval()
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(2, 50, d, generator=g) for m, d in (("text", 768), ("audio", 5))}
    batch["vision"] = torch.randn(2, 50, 20, generator=g)
    with torch.no_grad():
        out = model(batch)
    assert out.pred.shape == (2,)  # "M" squeezed
    shapes = {k: tuple(v.shape) for k, v in out.extras.items()}
    assert shapes == {
        "feature_t": (2, 100),
        "feature_a": (2, 100),
        "feature_v": (2, 100),
        "feature_f": (2, 300),
    }


# --- registry, presets, engine --------------------------------------------------------------------


def test_registered_with_variants_presets_and_search_space():
    assert get_spec("mult").model_cls is MulT
    assert SPEC.default_variant == "full" and {"full", "causal"} <= set(SPEC.variants)
    assert {"mmsa", "paper", "quick"} <= set(SPEC.presets)
    for name, preset in SPEC.presets.items():
        cfg = apply_overrides(MulTConfig(), preset["model"], name)
        apply_overrides(TrainConfig(), preset["train"], name)
        assert cfg.causal_mask is False  # issue 18: the paper's unmasked attention everywhere
    mmsa = SPEC.presets["mmsa"]["train"]
    assert (mmsa["lr"], mmsa["batch_size"], mmsa["grad_clip"]) == (2e-3, 16, 0.0)
    assert SPEC.presets["mmsa"]["model"]["grad_clip_value"] == 0.6
    for variant, overrides in SPEC.variants.items():
        apply_overrides(MulTConfig(), overrides, variant)
    assert 2 <= len(SPEC.search_space) <= 4


def _split(n: int, seed: int, lengths: tuple[int, int, int]):
    from msaflow.feature_store.schema import SplitData

    rng = np.random.default_rng(seed)
    feats = {
        m: rng.standard_normal((n, T, d)).astype(np.float32)
        for (m, d), T in zip(DIMS.items(), lengths, strict=True)
    }
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=np.clip(feats["text"][:, 0, 0], -3, 3).astype(np.float32),
        features=feats,
        lengths={m: rng.integers(1, T + 1, n) for m, T in zip(DIMS, lengths, strict=True)},
    )


def test_trains_through_the_engine_on_unaligned_sequences():
    from msaflow.tasks.train import train_model

    cfg = resolve_run_config(
        "mult",
        None,
        "quick",
        train_overrides={"epochs": 1, "batch_size": 8, "device": "cpu"},
        input_spec={"text_dim": 6, "audio_dim": 3, "vision_dim": 4, "seq_len": 6},
    )
    T = (6, 9, 4)
    result = train_model(
        cfg, {"train": _split(16, 0, T), "valid": _split(8, 1, T), "test": _split(8, 2, T)}
    )
    assert np.isfinite(result.test["test/mae"])
