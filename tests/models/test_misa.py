"""MISA: the three losses on hand-made tensors, the sLSTM's masking, the model as the engine uses
it, and parity with thuiar/MMSA 2.2.1 (parameter count, output keys and shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msaflow.errors import ConfigError
from msaflow.models import get_spec
from msaflow.models.misa import (
    FUSION_ORDER,
    MISA,
    SLSTM,
    SPEC,
    MISAConfig,
    cmd,
    diff_loss,
    difference_loss,
    masked_mean,
    reconstruction_loss,
    similarity_loss,
)
from msaflow.tasks.config import TrainConfig, apply_overrides, resolve_run_config

DIMS = {"text": 6, "audio": 3, "vision": 4}
MODS = ("t", "a", "v")


def tiny_cfg(**kw) -> MISAConfig:
    base = dict(
        text_dim=6,
        audio_dim=3,
        vision_dim=4,
        seq_len=5,
        hidden=8,
        fusion_ff=16,
        dropout=0.0,
        fusion_dropout=0.0,
    )
    return MISAConfig(**{**base, **kw})


def make_batch(B: int = 4, T: int = 5, lengths=None, classes: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths if lengths is not None else [T] * B)
    batch = {name: torch.randn(B, T, d, generator=g) for name, d in DIMS.items()}
    for name in DIMS:
        batch[f"{name}_len"] = lens.clone()
    batch["label"] = torch.randn(B, generator=g) * 2
    if classes:
        batch["class_label"] = torch.randint(0, classes, (B,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


def model_of(seed: int = 0, **kw) -> MISA:
    torch.manual_seed(seed)
    return MISA(tiny_cfg(**kw))


# --- L_sim: the central moment discrepancy -------------------------------------------------------


def test_cmd_on_hand_made_1d_samples():
    x = torch.tensor([[0.0], [1.0]])  # mean 0.5; central moments c2 0.25, c3 0, c4 0.0625, c5 0
    y = torch.tensor([[0.5], [0.5]])  # mean 0.5; every central moment 0
    assert float(cmd(x, y, 5)) == pytest.approx(0.25 + 0.0625)
    assert float(cmd(x, y, 2)) == pytest.approx(0.25)  # only the mean and c2
    z = torch.tensor([[1.0], [1.0], [1.0]])  # mean 1: |0.5 - 1| on top
    assert float(cmd(x, z, 5)) == pytest.approx(0.5 + 0.25 + 0.0625)
    assert float(cmd(z, x, 5)) == pytest.approx(float(cmd(x, z, 5)))  # symmetric
    assert float(cmd(x, x, 5)) == 0.0


def test_cmd_on_hand_made_2d_samples():
    # per dimension: x = ({0, 1}, {0, 0}), y = ({0, 0}, {0, 1}); each moment's difference is a
    # (+v, -v) vector, so each norm is v * sqrt(2): means 0.5, c2 0.25, c3 0, c4 0.0625, c5 0
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    expected = math.sqrt(2.0) * (0.5 + 0.25 + 0.0625)
    assert float(cmd(x, y, 5)) == pytest.approx(expected)
    # a different sample count on each side is fine: CMD compares moments
    y3 = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.5]])
    assert torch.isfinite(cmd(x, y3, 5))


def test_cmd_gradient_stays_finite_where_the_references_is_nan():
    # MMSA's CMD.matchnorm is sum(d**2) ** 0.5: NaN gradient when two moments coincide, as in
    # every batch of one (all central moments 0); ours is 0 there, the same value elsewhere
    x = torch.rand(1, 3, requires_grad=True)
    y = torch.rand(1, 3)
    cmd(x, y, 5).backward()
    assert torch.isfinite(x.grad).all()
    a = torch.rand(4, 3, requires_grad=True)
    cmd(a, a.detach().clone(), 5).backward()
    assert torch.isfinite(a.grad).all()


def test_similarity_loss_is_the_mean_of_the_three_pairs():
    shared = {
        "t": torch.tensor([[0.0], [1.0]]),
        "v": torch.tensor([[0.5], [0.5]]),
        "a": torch.tensor([[1.0], [1.0]]),
    }
    # CMD(t, v) = 0.3125, CMD(t, a) = 0.8125, CMD(a, v) = |1 - 0.5| = 0.5
    assert float(similarity_loss(shared, 5)) == pytest.approx((0.3125 + 0.8125 + 0.5) / 3)


# --- L_diff: soft orthogonality -------------------------------------------------------------------


def _block(rows: int, k: int, col: int = 0, d: int = 2) -> torch.Tensor:
    """A zero-mean (rows, d) matrix with +1 / -1 in rows 2k, 2k+1 of column ``col``."""
    x = torch.zeros(rows, d)
    x[2 * k, col], x[2 * k + 1, col] = 1.0, -1.0
    return x


def test_diff_loss_is_zero_for_orthogonal_inputs_and_positive_for_identical_ones():
    a, b = _block(4, 0), _block(4, 1, col=1)  # disjoint rows: A^T B = 0
    assert float(diff_loss(a, b)) == pytest.approx(0.0, abs=1e-12)
    # identical: rows are already unit after centring, A^T A = [[2, 0], [0, 0]], mean of squares 1
    assert float(diff_loss(a, a)) == pytest.approx(1.0, rel=1e-5)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert float(diff_loss(x, x)) == pytest.approx(2.0, rel=1e-5)  # A^T A = 2 I -> (4+4)/4


def test_diff_loss_centres_per_dimension_and_normalises_rows_by_hand():
    a = torch.tensor([[1.0], [-1.0]])
    # b's second column is constant: centring removes it; rows become (1, 0), (-1, 0)
    b = torch.tensor([[3.0, 1.0], [-3.0, 1.0]])
    # A^T B = [1*1 + (-1)(-1), 0] = [2, 0] -> mean of squares (4 + 0) / 2 = 2
    assert float(diff_loss(a, b)) == pytest.approx(2.0, rel=1e-5)
    assert float(diff_loss(a * 7.0, b)) == pytest.approx(2.0, rel=1e-5)  # scale-free


def test_diff_loss_detached_norms_change_the_gradient_not_the_value():
    a = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(5, 3)
    v1 = diff_loss(a, b, detach_norm=True)
    (g1,) = torch.autograd.grad(v1, a)
    v2 = diff_loss(a, b, detach_norm=False)
    (g2,) = torch.autograd.grad(v2, a)
    assert float(v1.detach()) == pytest.approx(float(v2.detach()))
    assert not torch.allclose(g1, g2)


def test_difference_loss_sums_private_shared_and_private_private_terms():
    rows = 8  # four disjoint row blocks: private t, v, a in blocks 0-2, every shared in block 3
    private = {"t": _block(rows, 0), "v": _block(rows, 1), "a": _block(rows, 2)}
    shared = {m: _block(rows, 3) for m in MODS}
    assert float(difference_loss(shared, private)) == pytest.approx(0.0, abs=1e-12)
    # private_t := shared_t: only the (p_t, s_t) term is on, = diff_loss(block, block) = 1
    private["t"] = shared["t"].clone()
    assert float(difference_loss(shared, private)) == pytest.approx(1.0, rel=1e-5)
    # private_a := private_v: only the (p_a, p_v) term adds, another 1
    private["a"] = private["v"].clone()
    assert float(difference_loss(shared, private)) == pytest.approx(2.0, rel=1e-5)


# --- L_recon -------------------------------------------------------------------------------------


def test_reconstruction_loss_by_hand():
    orig = {
        "t": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "v": torch.ones(2, 2),
        "a": torch.zeros(2, 2),
    }
    recon = {
        "t": torch.tensor([[1.0, 0.0], [3.0, 5.0]]),  # squared errors 0, 4, 0, 1 -> 1.25
        "v": torch.ones(2, 2),  # 0
        "a": torch.ones(2, 2),  # 1
    }
    assert float(reconstruction_loss(orig, recon)) == pytest.approx((1.25 + 0.0 + 1.0) / 3)


@pytest.mark.parametrize("decoder", ["shared", "per_modality"])
def test_reconstruction_decodes_the_sum_of_shared_and_private(decoder):
    model = model_of(decoder=decoder).eval()
    with torch.no_grad():
        out = model(make_batch())
        for m in MODS:
            s, p = out.extras[f"shared_{m}"], out.extras[f"private_{m}"]
            dec = model.decoder if decoder == "shared" else model.decoder[m]
            torch.testing.assert_close(out.extras[f"recon_{m}"], dec(s + p))
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    assert n_dec == (1 if decoder == "shared" else 3) * (8 * 8 + 8)


# --- utterance-level representations ------------------------------------------------------------


def test_slstm_final_states_equal_an_unpadded_run_and_ignore_padding():
    torch.manual_seed(0)
    enc = SLSTM(3, 3).eval()
    x = torch.randn(3, 5, 3)
    lengths = torch.tensor([5, 2, 0])
    with torch.no_grad():
        u = enc(x, lengths)
        assert u.shape == (3, 12)
        # row 1 alone, its two valid steps only: [h1 fwd; h2 fwd; h1 bwd; h2 bwd]
        xi = x[1:2, :2]
        out1, (h1, _) = enc.rnn1(xi)
        _, (h2, _) = enc.rnn2(enc.norm(out1))
        manual = torch.cat([h1[0], h2[0], h1[1], h2[1]], dim=-1)
        torch.testing.assert_close(u[1:2], manual)
        noisy = x.clone()
        noisy[1, 2:] = 1e3
        torch.testing.assert_close(enc(noisy, lengths), u)
    assert torch.equal(u[2], torch.zeros(12))  # a length-0 row has no utterance vector


def test_text_is_the_mean_of_its_valid_frozen_features():
    model = model_of().eval()
    batch = make_batch(lengths=[5, 2, 1, 3])
    n = 2
    torch.testing.assert_close(
        model.utterance(batch, "t")[1], batch["text"][1, :n].mean(0), rtol=1e-6, atol=1e-6
    )
    x = torch.tensor([[[1.0], [3.0], [9.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(x, mask), x[:, :2].mean(1))


def test_padding_content_does_not_change_the_output():
    model = model_of().eval()
    batch = make_batch(lengths=[5, 3, 1, 4])
    noisy = dict(batch)
    for name in DIMS:
        noisy[name] = batch[name].clone()
        noisy[name][torch.arange(5)[None, :] >= batch[f"{name}_len"][:, None]] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred)


# --- the model as the engine uses it --------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("head", ["regression", "classification"])
def test_forward_backward_with_masks_a_zero_length_row_and_T1(head, T):
    classes = 4 if head == "classification" else 0
    kw = dict(head="classification", num_classes=4) if classes else {}
    model = model_of(**kw).train()
    lengths = [T, 0, 1, T]  # a row with no valid step in any modality
    batch = make_batch(T=T, lengths=lengths, classes=classes)
    out = model(batch)
    assert out.pred.shape == ((4, 4) if classes else (4,))
    total, parts = model.loss(out, batch)
    assert set(parts) == {"loss/task", "loss/sim", "loss/diff", "loss/recon", "loss/total"}
    assert all(math.isfinite(v) for v in parts.values())
    total.backward()
    model.after_backward(out, batch, 0)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"  # no dead parameters
        assert torch.isfinite(p.grad).all(), name


def test_lengths_may_be_missing():
    model = model_of().eval()
    batch = {k: v for k, v in make_batch().items() if not k.endswith("_len")}
    full = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).pred, model(full).pred)


def test_loss_is_the_weighted_sum_and_task_loss_switches_l1_mse():
    torch.manual_seed(0)
    batch = make_batch()
    w = dict(sim_weight=0.3, diff_weight=0.1, recon_weight=2.0)
    for kind in ("l1", "mse"):
        model = model_of(task_loss=kind, **w).eval()
        out = model(batch)
        total, parts = model.loss(out, batch)
        parts = {k: float(v) for k, v in parts.items()}  # 0-dim tensors (models.base.Scalar)
        err = out.pred.detach() - batch["label"]
        task = err.abs().mean() if kind == "l1" else err.pow(2).mean()
        assert parts["loss/task"] == pytest.approx(float(task), rel=1e-5)
        expected = (
            parts["loss/task"]
            + 0.3 * parts["loss/sim"]
            + 0.1 * parts["loss/diff"]
            + 2.0 * parts["loss/recon"]
        )
        assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    # classification: cross-entropy whatever task_loss says
    model = model_of(head="classification", num_classes=3, task_loss="mse").eval()
    batch = make_batch(classes=3)
    out = model(batch)
    ce = torch.nn.functional.cross_entropy(out.pred.detach(), batch["class_label"])
    assert model.loss(out, batch)[1]["loss/task"] == pytest.approx(float(ce), rel=1e-5)


def test_after_backward_clips_gradients_by_value():
    model = model_of(clip_value=1e-4)
    batch = make_batch()
    out = model(batch)
    (model.loss(out, batch)[0] * 1e4).backward()
    model.after_backward(out, batch, 0)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(grads.abs().max()) <= 1e-4 + 1e-12
    assert float(grads.abs().max()) == pytest.approx(1e-4)  # something was clipped


def test_config_errors_name_the_field():
    for kw, field in [
        (dict(hidden=9, fusion_heads=2), "misa.hidden"),
        (dict(vision_dim=0), "misa.vision_dim"),
        (dict(decoder="both"), "misa.decoder"),
        (dict(task_loss="huber"), "misa.task_loss"),
        (dict(sim_weight=-1.0), "misa.sim_weight"),
        (dict(clip_value=float("nan")), "misa.clip_value"),
        (dict(head="classification", num_classes=1), "misa.num_classes"),
    ]:
        with pytest.raises(ConfigError, match=field):
            MISA(tiny_cfg(**kw))


def test_text_slstm_option_and_orthogonal_init():
    model = model_of(text_pool="slstm", orthogonal_hh=True)
    assert set(model.slstm) == {"t", "a", "v"}
    w = model.slstm["t"].rnn1.weight_hh_l0.detach()  # (4h, h): orthonormal columns
    torch.testing.assert_close(w.t() @ w, torch.eye(6), atol=1e-5, rtol=0)
    out = model(make_batch(lengths=[5, 0, 2, 1]))
    assert out.pred.shape == (4,)


def test_registered_with_variants_and_presets():
    assert get_spec("misa").model_cls is MISA
    assert {"mmsa", "paper", "quick"} <= set(SPEC.presets)
    assert {"full", "no_sim", "no_diff", "no_recon"} <= set(SPEC.variants)
    for name, preset in SPEC.presets.items():
        apply_overrides(MISAConfig(), preset["model"], name)
        apply_overrides(TrainConfig(), preset["train"], name)
    assert set(SPEC.search_space) <= set(vars(MISAConfig()))
    cfg = resolve_run_config(
        "misa",
        "no_sim",
        "mmsa",
        input_spec={"text_dim": 768, "audio_dim": 5, "vision_dim": 20, "seq_len": 50},
    )
    assert cfg.model_cfg.sim_weight == 0.0 and cfg.model_cfg.task_loss == "mse"
    assert cfg.train.batch_size == 16 and cfg.train.lr == 1e-4
    assert MISAConfig().task_loss == "l1"  # msaflow's default: L1, as the other models


# --- parity with thuiar/MMSA 2.2.1 ---------------------------------------------------------------

MOSI = {"text_dim": 768, "audio_dim": 5, "vision_dim": 20, "seq_len": 50}


def mosi_model(preset: str) -> MISA:
    torch.manual_seed(0)
    return MISA(MISAConfig(**MOSI, **SPEC.presets[preset]["model"]))


def n_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_trainable_parameter_count_matches_mmsa_2_2_1():
    # MMSA 2.2.1 (PyPI mmsa==2.2.1), models/singleTask/MISA.py, built from config_regression.json
    # (misa / mosi) at MOSI's shapes (aligned, T=50, 768/5/20): 110,620,273 trainable parameters,
    # of which BertTextEncoder (fine-tuned bert-base-uncased) is 109,482,240 -> 1,138,033 without
    # BERT. Of those, 3,588 never train and are not built here: sp_discriminator (Linear(128, 4),
    # 516; no loss reads its output, so it never gets a gradient) and tlayer_norm
    # (LayerNorm(1536), 3,072; the text sLSTM's norm, unused with BERT text).
    reference_without_bert = 1_138_033
    dead = 516 + 3_072
    assert n_trainable(mosi_model("mmsa")) == reference_without_bert - dead == 1_134_445
    # the paper's shared decoder: two Linear(128, 128) fewer
    assert n_trainable(mosi_model("paper")) == 1_134_445 - 2 * (128 * 128 + 128)


def test_output_keys_and_shapes_correspond_to_mmsa():
    # the reference's forward returns {"M": (B, 1)}; its trainer reads these (B, 128) attributes
    reference_attr_to_ours = {
        **{f"utt_shared_{m}": f"shared_{m}" for m in MODS},
        **{f"utt_private_{m}": f"private_{m}" for m in MODS},
        **{f"utt_{m}_orig": f"orig_{m}" for m in MODS},
        **{f"utt_{m}_recon": f"recon_{m}" for m in MODS},
    }
    model = mosi_model("mmsa").eval()
    B, T = 3, 50
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([50, 20, 1])
    batch = {
        "text": torch.randn(B, T, 768, generator=g),
        "audio": torch.randn(B, T, 5, generator=g),
        "vision": torch.randn(B, T, 20, generator=g),
        **{f"{m}_len": lens for m in DIMS},
        "label": torch.zeros(B),
    }
    with torch.no_grad():
        out = model(batch)
    assert out.pred.shape == (B,)  # the reference's "M" (B, 1), squeezed as the engine expects
    assert set(out.extras) == set(reference_attr_to_ours.values())
    for ours in reference_attr_to_ours.values():
        assert out.extras[ours].shape == (B, 128), ours
    # the fusion sees the reference's order: private t, v, a, then shared t, v, a
    reference_order = tuple((k, m) for k in ("private", "shared") for m in ("t", "v", "a"))
    assert reference_order == FUSION_ORDER
    cls = MISA(MISAConfig(**MOSI, head="classification", num_classes=3))
    with torch.no_grad():
        assert cls(batch).pred.shape == (B, 3)


def test_trains_through_the_engine():
    from msaflow.feature_store.schema import SplitData
    from msaflow.tasks.train import train_model

    def split(n: int, seed: int) -> SplitData:
        rng = np.random.default_rng(seed)
        feats = {m: rng.standard_normal((n, 3, d)).astype(np.float32) for m, d in DIMS.items()}
        return SplitData(
            ids=np.array([f"{seed}-{i}" for i in range(n)]),
            labels=np.clip(feats["text"][:, 0, 0] * 2, -3, 3).astype(np.float32),
            features=feats,
            lengths={m: rng.integers(0, 4, n) for m in DIMS},
        )

    cfg = resolve_run_config(
        "misa",
        None,
        "quick",
        train_overrides={"epochs": 2, "batch_size": 16},
        input_spec={"text_dim": 6, "audio_dim": 3, "vision_dim": 4, "seq_len": 3},
    )
    result = train_model(cfg, {"train": split(40, 0), "valid": split(16, 1), "test": split(16, 2)})
    assert np.isfinite(result.test["test/mae"])
