"""TFN: the tensor fusion on hand-made vectors, the subtensor ablation, masking, the contract, and
parity with the reference (thuiar/MMSA 2.2.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from msaflow.models import get_spec
from msaflow.models.base import ModelOutput
from msaflow.models.tfn import (
    REFERENCE_OUTPUTS,
    SPEC,
    TERM_ORDERS,
    TFN,
    TextSubNet,
    TFNConfig,
    append_one,
    tensor_fusion,
    term_mask,
)
from msaflow.tasks.config import TrainConfig, apply_overrides, resolve_run_config
from msaflow.tasks.train import count_trainable_params

DIMS = {"text": 6, "audio": 3, "vision": 4}
MOSI = {"text_dim": 768, "audio_dim": 5, "vision_dim": 20, "seq_len": 50}  # MMSA aligned MOSI


def tiny(**kw) -> TFNConfig:
    base = dict(
        text_dim=DIMS["text"],
        audio_dim=DIMS["audio"],
        vision_dim=DIMS["vision"],
        seq_len=5,
        text_hidden=5,
        text_out=2,
        audio_hidden=2,
        vision_hidden=2,
        post_fusion_dim=8,
        audio_dropout=0.0,
        vision_dropout=0.0,
        post_fusion_dropout=0.0,
    )
    return TFNConfig(**{**base, **kw})


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


# --- the tensor fusion layer, by hand ---------------------------------------------------------


def test_tensor_fusion_entries_on_hand_made_2d_vectors():
    # primes, so every product names its factors
    z_a, z_v, z_t = (
        torch.tensor([[2.0, 3.0]]),
        torch.tensor([[5.0, 7.0]]),
        torch.tensor([[11.0, 13.0]]),
    )
    flat = tensor_fusion(z_a, z_v, z_t)
    assert flat.shape == (1, 27)  # (2+1)(2+1)(2+1)
    Z = flat.reshape(3, 3, 3)
    assert Z[0, 0, 0] == 1  # the constant: 1 * 1 * 1
    # unimodal terms: the other two indices at their appended 1
    assert Z[1:, 0, 0].tolist() == [2.0, 3.0]
    assert Z[0, 1:, 0].tolist() == [5.0, 7.0]
    assert Z[0, 0, 1:].tolist() == [11.0, 13.0]
    # bimodal terms
    assert Z[1:, 1:, 0].tolist() == [[10.0, 14.0], [15.0, 21.0]]  # z_a (x) z_v
    assert Z[1:, 0, 1:].tolist() == [[22.0, 26.0], [33.0, 39.0]]  # z_a (x) z_t
    assert Z[0, 1:, 1:].tolist() == [[55.0, 65.0], [77.0, 91.0]]  # z_v (x) z_t
    # trimodal terms
    assert Z[2, 1, 2] == 3 * 5 * 13 and Z[1, 2, 1] == 2 * 7 * 11
    # every entry, against the outer product written out with loops
    a, v, t = [1.0, 2.0, 3.0], [1.0, 5.0, 7.0], [1.0, 11.0, 13.0]
    expected = [a[i] * v[j] * t[k] for i in range(3) for j in range(3) for k in range(3)]
    assert flat[0].tolist() == expected  # audio-major, text fastest: the reference's layout


def test_tensor_fusion_is_per_sample_and_a_missing_modality_keeps_its_constant():
    z_a = torch.tensor([[2.0, 3.0], [-1.0, 0.5]])
    z_v = torch.tensor([[5.0, 7.0], [4.0, -2.0]])
    z_t = torch.tensor([[11.0, 13.0], [0.0, 3.0]])
    flat = tensor_fusion(z_a, z_v, z_t)
    torch.testing.assert_close(flat[1:], tensor_fusion(z_a[1:], z_v[1:], z_t[1:]))
    torch.testing.assert_close(append_one(z_a), torch.tensor([[1.0, 2.0, 3.0], [1.0, -1.0, 0.5]]))
    # no vision: Z = [1; z_a] (x) [1; z_t], the audio-text terms alone
    no_v = tensor_fusion(z_a, z_v[:, :0], z_t).reshape(2, 3, 3)
    torch.testing.assert_close(no_v[0], torch.tensor([[1.0, 11, 13], [2, 22, 26], [3, 33, 39]]))


def test_term_mask_keeps_the_orders_of_each_variant():
    counts = {o: 0 for o in range(4)}  # 2-d embeddings: 1 constant, 6 uni, 12 bi, 8 tri
    Z = tensor_fusion(
        torch.tensor([[2.0, 3.0]]), torch.tensor([[5.0, 7.0]]), torch.tensor([[11.0, 13.0]])
    ).reshape(3, 3, 3)
    for i in range(3):
        for j in range(3):
            for k in range(3):
                counts[(i > 0) + (j > 0) + (k > 0)] += 1
    assert counts == {0: 1, 1: 6, 2: 12, 3: 8}
    for name, orders in TERM_ORDERS.items():
        mask = term_mask(2, 2, 2, orders).reshape(3, 3, 3)
        assert int(mask.sum()) == sum(counts[o] for o in orders), name
    bi = term_mask(2, 2, 2, TERM_ORDERS["bimodal"]).reshape(3, 3, 3)
    assert bi[1, 1, 0] and bi[0, 2, 1] and not bi[1, 0, 0] and not bi[1, 1, 1] and not bi[0, 0, 0]
    tri = term_mask(2, 2, 2, TERM_ORDERS["trimodal"]).reshape(3, 3, 3)
    torch.testing.assert_close((Z * tri)[1:, 1:, 1:], Z[1:, 1:, 1:])
    assert float((Z * tri).sum()) == float(Z[1:, 1:, 1:].sum())
    notri = term_mask(2, 2, 2, TERM_ORDERS["notrimodal"]).reshape(3, 3, 3)
    assert not notri[1:, 1:, 1:].any() and notri[0, 0, 0] and notri[2, 0, 1]


def test_variant_zeroes_the_dropped_terms_in_the_model():
    batch = make_batch()
    model = TFN(tiny(fusion_terms="bimodal")).eval()
    out = model(batch)
    Z = out.extras["fusion"].reshape(4, 3, 3, 3)
    assert (Z[:, 0, 0, 0] == 0).all() and (Z[:, 1:, 0, 0] == 0).all()  # constant, unimodal
    assert (Z[:, 1:, 1:, 1:] == 0).all()  # trimodal
    full = tensor_fusion(out.extras["z_a"], out.extras["z_v"], out.extras["z_t"])
    full = full.reshape(4, 3, 3, 3)
    torch.testing.assert_close(Z[:, 1:, 1:, 0], full[:, 1:, 1:, 0])  # bimodal terms kept
    torch.testing.assert_close(Z[:, 1:, 0, 1:], full[:, 1:, 0, 1:])
    torch.testing.assert_close(Z[:, 0, 1:, 1:], full[:, 0, 1:, 1:])
    assert Z[:, 0, 1:, 1:].abs().sum() > 0 or Z[:, 1:, 0, 1:].abs().sum() > 0
    with pytest.raises(ValueError, match="needs more modalities"):
        TFN(tiny(vision_dim=0, fusion_terms="trimodal"))


# --- the subnetworks and masking --------------------------------------------------------------


def test_text_lstm_reads_only_the_valid_words():
    torch.manual_seed(0)
    net = TextSubNet(3, 4, 2, 0.0).eval()
    x = torch.randn(3, 5, 3)
    lengths = torch.tensor([5, 2, 0])
    z = net(x, lengths)
    torch.testing.assert_close(z[1:2], net(x[1:2, :2], None))  # the first two words alone
    torch.testing.assert_close(z[0:1], net(x[0:1], None))
    torch.testing.assert_close(z[2], net.linear_1.bias)  # no word: the initial state, zeros
    torch.testing.assert_close(net(x, torch.full((3,), 5)), net(x, None))


@pytest.mark.parametrize("dims", [(32, 128, 32), (2, 0, 3)])  # MOSI's mmsa sizes; a missing one
def test_tensor_fusion_is_the_einsum_outer_product_bit_for_bit(dims):
    """Issue 18: the broadcast products give einsum("bi,bj,bk->bijk")'s values and gradients bit
    for bit (torch.equal), so the faster form changes no result."""
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(32, d, generator=g) for d in dims]
    w = torch.randn(8, int(np.prod([d + 1 for d in dims])), generator=g)
    outs, grads = [], []
    for fuse in (
        tensor_fusion,
        lambda a, v, t: torch.einsum(
            "bi,bj,bk->bijk", append_one(a), append_one(v), append_one(t)
        ).flatten(1),
    ):
        leaves = [z.clone().requires_grad_() for z in zs]
        fused = fuse(*leaves)
        (fused @ w.t()).pow(2).sum().backward()
        outs.append(fused.detach())
        grads.append([z.grad for z in leaves])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(3, 5, 3, 4), (32, 50, 768, 128)])  # tiny; MOSI's (mmsa)
def test_full_lengths_skip_the_packing_bit_for_bit(shape):
    """Issue 18: a batch whose every length is T (or more) runs the LSTM unpacked. Checked against
    the packed LSTM it replaces: outputs and every gradient equal bit for bit (torch.equal), not
    merely close."""
    b, t, d_in, hidden = shape
    torch.manual_seed(0)
    net = TextSubNet(d_in, hidden, 8, 0.0).train()
    x = torch.randn(b, t, d_in)
    lengths = torch.full((b,), t)
    lengths[0] = t + 3  # longer than T counts as full (clamped to T, as before)

    def packed_reference(x):
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1, max=t), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = net.rnn(packed)
        return net.linear_1(net.dropout(h[-1]))

    outs, grads = [], []
    for f in (lambda x: net(x, lengths), packed_reference):
        xi = x.clone().requires_grad_()
        net.zero_grad()
        z = f(xi)
        z.pow(2).sum().backward()
        outs.append(z.detach())
        grads.append([xi.grad, *(p.grad for p in net.parameters())])
    assert torch.equal(outs[0], outs[1])
    for g0, g1 in zip(*grads, strict=True):
        assert torch.equal(g0, g1)
    # one shorter row: packed as before (that row reads its valid words only)
    short = lengths.clone()
    short[-1] = 2
    torch.testing.assert_close(net(x, short)[-1:], net(x[-1:, :2], None))


def test_padding_content_does_not_change_the_output_and_missing_lengths_mean_all_real():
    model = TFN(tiny()).eval()
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


def test_regression_score_is_bounded_and_the_bound_is_a_rescaled_sigmoid():
    torch.manual_seed(0)
    bounded = TFN(tiny()).eval()
    torch.manual_seed(0)
    linear = TFN(tiny(output_bound=0.0)).eval()
    batch = make_batch()
    with torch.no_grad():
        y = linear(batch).pred
        torch.testing.assert_close(bounded(batch).pred, 6 * torch.sigmoid(y) - 3)
    assert bounded(batch).pred.abs().max() < 3


@pytest.mark.parametrize("t", [1, 5])
def test_forward_backward_regression_and_classification_with_masks(t):
    batch = make_batch(t=t)
    for m in DIMS:
        batch[f"{m}_len"][1] = 0  # a sample with no valid step in any modality
    model = TFN(tiny())
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.pred.shape == (4,)
    assert torch.isfinite(out.pred).all()
    total, parts = model.loss(out, batch)
    total.backward()
    assert set(parts) == {"loss/task", "loss/total"}
    assert model.post_fusion_layer_1.weight.grad is not None
    assert model.text_subnet.rnn.weight_ih_l0.grad.abs().sum() > 0
    cls = TFN(tiny(head="classification", num_classes=4))
    cbatch = make_batch(t=t, classes=4)
    cbatch["text_len"][2] = 0
    out = cls(cbatch)
    assert out.pred.shape == (4, 4) and torch.isfinite(out.pred).all()
    cls.loss(out, cbatch)[0].backward()
    # a training batch of one sample (the last partial batch) does not trip BatchNorm
    one = {k: v[:1] for k, v in batch.items()}
    assert model(one).pred.shape == (1,)


def test_missing_modalities_and_bad_configs():
    batch = make_batch()
    model = TFN(tiny(audio_dim=0))
    batch.pop("audio"), batch.pop("audio_len")
    out = model(batch)
    assert out.extras["z_a"].shape == (4, 0) and out.extras["fusion"].shape == (4, 3 * 3)
    with pytest.raises(ValueError, match="lacks \\['vision'\\]"):
        model({k: v for k, v in batch.items() if not k.startswith("vision")})
    with pytest.raises(ValueError, match="every \\*_dim is 0"):
        TFN(tiny(text_dim=0, audio_dim=0, vision_dim=0))
    with pytest.raises(ValueError, match="num_classes"):
        TFN(tiny(head="classification", num_classes=1))
    with pytest.raises(ValueError, match="tfn.post_fusion_dropout"):
        TFN(tiny(post_fusion_dropout=1.0))
    with pytest.raises(ValueError, match="tfn.text_out"):
        TFN(tiny(text_out=0))


# --- parity with thuiar/MMSA 2.2.1 -------------------------------------------------------------

# MMSA 2.2.1 (PyPI mmsa==2.2.1), models/singleTask/TFN.py with config/config_regression.json
# "tfn"/"mosi" and feature_dims (768, 5, 20): sum of p.numel() over parameters with
# requires_grad (all of them are in its Adam, list(model.parameters())[2:]; the two skipped,
# output_range and output_shift, have requires_grad=False). No BERT is fine-tuned: nothing excluded.
REFERENCE_TRAINABLE = {"regression": 9_497_043, "classification-4": 9_497_238}
# the reference's outputs for a batch of 2 at the same config (regression)
REFERENCE_SHAPES = {
    "M": (2, 1),
    "Feature_t": (2, 32),
    "Feature_a": (2, 32),
    "Feature_v": (2, 128),
    "Feature_f": (2, 33 * 129 * 33),
}


def _mmsa_cfg(**input_spec):
    return resolve_run_config("tfn", None, "mmsa", input_spec={**MOSI, **input_spec})


def test_trainable_parameters_equal_the_reference_at_the_mmsa_preset():
    assert count_trainable_params(_mmsa_cfg()) == REFERENCE_TRAINABLE["regression"]
    cls = _mmsa_cfg(head="classification", num_classes=4)
    assert count_trainable_params(cls) == REFERENCE_TRAINABLE["classification-4"]


def test_output_keys_and_shapes_correspond_to_the_reference():
    torch.manual_seed(0)
    model = TFN(_mmsa_cfg().model_cfg).eval()
    g = torch.Generator().manual_seed(1)
    mosi_dims = {"text": 768, "audio": 5, "vision": 20}
    batch = {m: torch.randn(2, 50, d, generator=g) for m, d in mosi_dims.items()}
    with torch.no_grad():
        out = model(batch)
    assert set(REFERENCE_OUTPUTS) == set(REFERENCE_SHAPES)
    for ref_key, ours in REFERENCE_OUTPUTS.items():
        got = out.pred.unsqueeze(-1) if ours == "pred" else out.extras[ours]
        assert tuple(got.shape) == REFERENCE_SHAPES[ref_key], ref_key
    assert set(out.extras) == set(REFERENCE_OUTPUTS.values()) - {"pred"}


# --- registry, presets and the engine ---------------------------------------------------------


def test_paper_preset_is_the_authors_mosi_script_and_trains_with_adamax():
    """A2Zadeh/TensorFusionNetwork tf_mosi.py (module docstring): 32 / 32 / LSTM 128 -> 64, dropout
    0.2, two fusion layers of 160, 8 sigmoid - 4; Adamax at 0.01, batch 128, patience 5."""
    from msaflow.tasks.train import build_model, build_optimizer

    cfg = resolve_run_config("tfn", "full", "paper", input_spec=MOSI)
    m, t = cfg.model_cfg, cfg.train
    assert (m.audio_hidden, m.vision_hidden, m.text_hidden, m.text_out) == (32, 32, 128, 64)
    assert (m.audio_dropout, m.vision_dropout, m.text_dropout) == (0.2, 0.2, 0.0)
    assert (m.post_fusion_dim, m.post_fusion_dropout, m.output_bound) == (160, 0.2, 4.0)
    assert (t.optimizer, t.lr, t.batch_size, t.weight_decay, t.patience) == (
        "adamax",
        0.01,
        128,
        0.0,
        5,
    )
    model = build_model(cfg)
    assert isinstance(build_optimizer(model, cfg), torch.optim.Adamax)
    # the flattened Z: (32 + 1)(32 + 1)(64 + 1), as the script's Reshape
    assert model.post_fusion_layer_1.in_features == 33 * 33 * 65


def test_registered_with_variants_presets_and_search_space():
    assert get_spec("tfn").model_cls is TFN
    assert {"mmsa", "paper", "quick"} <= set(SPEC.presets)
    for name, preset in SPEC.presets.items():
        apply_overrides(TFNConfig(), preset["model"], name)
        apply_overrides(TrainConfig(), preset["train"], name)
    for variant in SPEC.variants:
        resolve_run_config("tfn", variant, "quick", input_spec=MOSI)
    train_fields = set(TrainConfig.__dataclass_fields__)
    for key, p in SPEC.search_space.items():
        assert key in (train_fields if p.target == "train" else TFNConfig.__dataclass_fields__)


def _split(n: int, seed: int, t: int, classes: int = 0):
    from msaflow.feature_store.schema import SplitData

    rng = np.random.default_rng(seed)
    feats = {m: rng.standard_normal((n, t, d)).astype(np.float32) for m, d in DIMS.items()}
    y = np.clip(feats["text"][:, 0, 0], -3, 3).astype(np.float32)
    if classes:
        y = (feats["text"][:, 0, 0] > 0).astype(np.float32)
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=y,
        features=feats,
        lengths=dict.fromkeys(DIMS, rng.integers(0, t + 1, n)),
    )


def test_trains_through_the_engine():
    from msaflow.tasks.train import train_model

    spec = {"text_dim": 6, "audio_dim": 3, "vision_dim": 4, "seq_len": 4}
    cfg = resolve_run_config(
        "tfn", None, "quick", train_overrides={"epochs": 2, "batch_size": 15}, input_spec=spec
    )
    splits = {"train": _split(31, 0, 4), "valid": _split(8, 1, 4), "test": _split(8, 2, 4)}
    result = train_model(cfg, splits)
    assert np.isfinite(result.test["test/mae"])
