"""Self-MM: the ULGM equations on hand-made tensors (centres, relative distances, the generated
label, the momentum update over two epochs), the start epoch, the loss weighting, masks, both heads,
checkpointed label memory and exact resume, and parity with thuiar/MMSA 2.2.1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msaflow.errors import ConfigError
from msaflow.feature_store.schema import SplitData
from msaflow.models import get_spec
from msaflow.models.base import ModelOutput
from msaflow.models.self_mm import (
    REFERENCE_OUTPUTS,
    SPEC,
    LabelMemory,
    SelfMM,
    SelfMMConfig,
    class_centres,
    generate_labels,
    momentum_update,
    relative_distance,
    unimodal_loss,
)
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.train import count_trainable_params, train_model

DIMS = {"text": 6, "audio": 5, "vision": 4}


def tiny(**kw) -> SelfMMConfig:
    base = dict(
        text_dim=6,
        audio_dim=5,
        vision_dim=4,
        audio_hidden=4,
        vision_hidden=4,
        audio_out=3,
        vision_out=3,
        post_fusion_dim=8,
        post_text_dim=4,
        post_audio_dim=4,
        post_vision_dim=4,
        post_text_dropout=0.0,
        post_audio_dropout=0.0,
    )
    return SelfMMConfig(**{**base, **kw})


def make_batch(b: int = 5, t: int = 6, classes: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for m, d in DIMS.items():
        batch[m] = torch.randn(b, t, d, generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        lengths[0] = t
        lengths[-1] = 0  # a row with no valid step
        batch[f"{m}_len"] = lengths
        batch[m][torch.arange(t)[None, :] >= lengths[:, None]] = 0.0
    batch["label"] = torch.tensor([2.0, -1.5, 0.5, -0.2, 1.0])[:b] if b <= 5 else torch.randn(b)
    if classes:
        batch["class_label"] = torch.randint(0, classes, (b,), generator=g)
        batch["label"] = batch["class_label"].float()
    batch["index"] = torch.arange(b)
    return batch


# --- ULGM equations ------------------------------------------------------------------------------


def test_class_centres_by_label_sign_with_and_without_zero():
    feats = torch.tensor([[1.0, 2.0], [10.0, 10.0], [-1.0, 0.0], [3.0, 4.0], [-3.0, -2.0]])
    labels = torch.tensor([1.0, 0.0, -2.0, 3.0, -0.5])
    valid = torch.ones(5, dtype=torch.bool)
    c_pos, c_neg = class_centres(feats, labels, valid, exclude_zero=True)
    torch.testing.assert_close(c_pos, torch.tensor([2.0, 3.0]))  # rows 0, 3
    torch.testing.assert_close(c_neg, torch.tensor([-2.0, -1.0]))  # rows 2, 4
    c_pos, _ = class_centres(feats, labels, valid, exclude_zero=False)  # rows 0, 1, 3
    torch.testing.assert_close(c_pos, torch.tensor([14.0 / 3, 16.0 / 3]))
    # rows not seen yet count in neither centre; an empty class has no centre
    c_pos, c_neg = class_centres(feats, labels, torch.tensor([True, True, False, True, False]))
    torch.testing.assert_close(c_pos, torch.tensor([2.0, 3.0]))
    assert c_neg is None


def test_relative_distance_on_hand_made_tensors():
    c_pos, c_neg = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    f = torch.tensor([[0.0, 1.0], [2.0, 0.0], [-2.0, 0.0]])
    # D_p = sqrt2, 1, 3; D_n = sqrt2, 3, 1 -> (D_n - D_p) / D_p = 0, 2, -2/3
    torch.testing.assert_close(
        relative_distance(f, c_pos, c_neg), torch.tensor([0.0, 2.0, -2.0 / 3.0])
    )


def test_generated_label_is_the_mean_of_ratio_and_shift_and_is_clipped():
    y_m = torch.tensor([2.0, 3.0, -1.0])
    alpha_m = torch.tensor([2.0, 0.5, -1.0])
    alpha_s = torch.tensor([1.0, 2.0, 1.0])
    # 0.5*2*(1/2) + 0.5*(2+1-2) = 1;  0.5*3*4 + 0.5*(3+2-0.5) = 8.25 -> H = 3;
    # 0.5*(-1)*(1/-1) + 0.5*(-1+1+1) = 0.5 + 0.5 = 1
    got = generate_labels(y_m, alpha_m, alpha_s, bound=3.0)
    torch.testing.assert_close(got, torch.tensor([1.0, 3.0, 1.0]))


def test_momentum_update_weighs_epochs():
    old, new = torch.tensor([3.0]), torch.tensor([0.0])
    torch.testing.assert_close(momentum_update(old, new, 1), torch.tensor([0.0]))  # n=1: y_new
    torch.testing.assert_close(momentum_update(old, new, 2), torch.tensor([1.0]))  # 1/3, 2/3
    torch.testing.assert_close(momentum_update(old, new, 3), torch.tensor([1.5]))  # 2/4, 2/4


def test_ulgm_label_update_across_two_epochs_by_hand():
    """1-d features, so every distance is an absolute difference. Four samples, subtask t."""
    cfg = tiny(start_epoch=1)
    mem = LabelMemory({"m": 1, "t": 1})
    y_m = torch.tensor([2.0, 1.0, -1.0, -2.0])
    idx = torch.arange(4)
    # epoch 0 (before the start epoch): store F*, labels y_t = y_m, nothing generated
    f0 = {
        "m": torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]),
        "t": torch.tensor([[1.0], [3.0], [-1.0], [-3.0]]),
    }
    mem.update(idx, y_m, f0, 0, cfg)
    torch.testing.assert_close(mem.label("t"), y_m)
    # epoch 1 (n = 2), sample 0 alone: centres m (+1, -1), t (+2, -2) from epoch 0's features
    # F_m* = 0.5: D_p 0.5, D_n 1.5 -> alpha_m = 2; F_t* = 0: D_p 2, D_n 2 -> alpha_t = 0
    # y_new = 0.5*2*0/2 + 0.5*(2 + 0 - 2) = 0; y^(2) = 1/3 * 2 + 2/3 * 0 = 2/3
    one = torch.tensor([0])
    mem.update(one, y_m[:1], {"m": torch.tensor([[0.5]]), "t": torch.tensor([[0.0]])}, 1, cfg)
    torch.testing.assert_close(mem.label("t"), torch.tensor([2.0 / 3, 1.0, -1.0, -2.0]))
    torch.testing.assert_close(mem.feat("t").squeeze(1), torch.tensor([0.0, 3.0, -1.0, -3.0]))
    # epoch 2 (n = 3): centres from the memory now: m pos mean(0.5, 1) = 0.75, neg -1;
    # t pos (labels 2/3, 1 > 0) mean(0, 3) = 1.5, neg mean(-1, -3) = -2
    # F_m* = 1.75: D_p 1, D_n 2.75 -> alpha_m = 1.75; F_t* = 3.5: D_p 2, D_n 5.5 -> alpha_t = 1.75
    # y_new = 0.5*2*1 + 0.5*(2 + 0) = 2; y^(3) = 2/4 * 2/3 + 2/4 * 2 = 4/3
    mem.update(one, y_m[:1], {"m": torch.tensor([[1.75]]), "t": torch.tensor([[3.5]])}, 2, cfg)
    torch.testing.assert_close(mem.label("t"), torch.tensor([4.0 / 3, 1.0, -1.0, -2.0]))
    torch.testing.assert_close(mem.label("m"), y_m)  # y_m is never changed
    # the loss weight of sample 0 is now tanh(|4/3 - 2|)
    w = unimodal_loss(torch.tensor([4.0 / 3 + 1.0]), mem.label("t")[:1], y_m[:1])
    torch.testing.assert_close(w, torch.tanh(torch.tensor(2.0 / 3)))


def test_label_update_is_skipped_while_a_class_has_no_centre():
    cfg = tiny()
    mem = LabelMemory({"m": 1, "t": 1})
    y_m = torch.tensor([1.0, 2.0])  # no negative sample: no C_n
    mem.update(torch.arange(2), y_m, {"m": torch.ones(2, 1), "t": torch.ones(2, 1)}, 0, cfg)
    skipped = mem.update(
        torch.arange(2), y_m, {"m": torch.ones(2, 1), "t": torch.ones(2, 1)}, 1, cfg
    )
    assert skipped == 1
    torch.testing.assert_close(mem.label("t"), y_m)


# --- the start epoch and the loss weighting -------------------------------------------------------


def test_no_unimodal_loss_before_the_start_epoch_then_generated_labels_train():
    torch.manual_seed(0)
    model = SelfMM(tiny(start_epoch=2)).train()
    batch = make_batch()
    for epoch in (0, 1):  # before the start epoch: y_s = y_m, every weight tanh(0) = 0
        model.zero_grad()
        out = model(batch)
        total, parts = model.loss(out, batch)
        assert parts["loss/uni_t"] == parts["loss/uni_a"] == parts["loss/uni_v"] == 0.0
        assert parts["loss/total"] == pytest.approx(parts["loss/task"])
        total.backward()
        for m in "tav":
            assert torch.count_nonzero(model.heads[m].layer3.weight.grad) == 0
        model.after_backward(out, batch, epoch)
        for s in "tav":
            torch.testing.assert_close(model.memory.label(s), batch["label"])
    out = model(batch)
    model.after_backward(out, batch, 2)  # the start epoch: labels move away from y_m
    assert any(not torch.equal(model.memory.label(s), batch["label"]) for s in "tav")
    model.zero_grad()
    out = model(batch)
    total, parts = model.loss(out, batch)
    assert parts["loss/uni_t"] + parts["loss/uni_a"] + parts["loss/uni_v"] > 0
    total.backward()
    assert any(torch.count_nonzero(model.heads[m].layer3.weight.grad) > 0 for m in "tav")


def test_loss_weighting_by_hand():
    model = SelfMM(tiny(subtasks="t", unimodal_weight=0.5)).train()
    idx = torch.tensor([0, 1])
    y_m = torch.tensor([1.0, -1.0])
    model.memory.update(idx, y_m, {"m": torch.zeros(2, 8), "t": torch.zeros(2, 4)}, 0, model.cfg)
    model.memory.label("t")[:] = torch.tensor([2.0, -1.0])  # generated labels, set by hand
    batch = {"label": y_m, "index": idx}
    out = ModelOutput(pred=torch.tensor([1.5, -1.0]), extras={"pred_t": torch.tensor([0.0, 5.0])})
    total, parts = model.loss(out, batch)
    # L_m = mean(0.5, 0) = 0.25; L_t = mean(tanh(1) * |0 - 2|, tanh(0) * |5 + 1|) = tanh(1)
    assert parts["loss/task"] == pytest.approx(0.25)
    assert parts["loss/uni_t"] == pytest.approx(math.tanh(1.0))
    assert float(total) == pytest.approx(0.25 + 0.5 * math.tanh(1.0))
    model.eval()  # validation: the multimodal task alone (the reference's do_test)
    total, parts = model.loss(out, batch)
    assert set(parts) == {"loss/task", "loss/total"} and float(total) == pytest.approx(0.25)


def test_no_ulgm_variant_trains_unimodal_heads_on_the_multimodal_label():
    model = SelfMM(tiny(ulgm=False)).train()
    assert model.memory is None
    batch = make_batch()
    out = model(batch)
    _, parts = model.loss(out, batch)
    for s in "tav":
        expected = (out.extras[f"pred_{s}"].detach() - batch["label"]).abs().mean()
        assert parts[f"loss/uni_{s}"] == pytest.approx(float(expected))


def test_m_only_freezes_the_unimodal_heads():
    full, m_only = SelfMM(tiny()), SelfMM(tiny(subtasks=""))
    n_heads = sum(p.numel() for p in full.heads.parameters())
    trainable = sum(p.numel() for p in m_only.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in full.parameters()) - n_heads
    assert m_only.memory is None


def test_batch_without_index_is_a_clear_error():
    model = SelfMM(tiny()).train()
    batch = make_batch()
    del batch["index"]
    with pytest.raises(ValueError, match="index"):
        model.loss(model(batch), batch)


# --- masks, heads, T=1 ----------------------------------------------------------------------------


def test_padding_content_does_not_change_the_output_and_empty_rows_give_the_initial_state():
    torch.manual_seed(0)
    model = SelfMM(tiny()).eval()
    batch = make_batch()
    noisy = dict(batch)
    for m in DIMS:
        noisy[m] = batch[m].clone()
        noisy[m][torch.arange(6)[None, :] >= batch[f"{m}_len"][:, None]] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred)
        f_a = model.subnets["a"](batch["audio"], batch["audio_len"])
    torch.testing.assert_close(f_a[-1], model.subnets["a"].linear.bias)  # h = 0 for length 0


@pytest.mark.parametrize("t", [1, 6])
@pytest.mark.parametrize("classes", [0, 4])
def test_forward_backward_both_heads(t, classes):
    torch.manual_seed(0)
    cfg = tiny(head="classification", num_classes=classes) if classes else tiny()
    model = SelfMM(cfg).train()
    batch = make_batch(t=t, classes=classes)
    for epoch in range(3):
        out = model(batch)
        assert out.pred.shape == ((5, classes) if classes else (5,))
        assert out.extras["pred_t"].shape == out.pred.shape
        total, parts = model.loss(out, batch)
        assert math.isfinite(float(total.detach()))
        total.backward()
        model.after_backward(out, batch, epoch)
        trace = model.on_epoch_end(epoch)
        assert all(math.isfinite(v) for v in trace.values())
    if classes:  # no ULGM: the unimodal heads learn the class with cross-entropy
        assert model.memory is None and parts["loss/uni_t"] > 0
    else:
        assert "ulgm/gap_t" in trace


def test_missing_lengths_mean_every_step_is_real():
    model = SelfMM(tiny()).eval()
    batch = make_batch()
    bare = {k: v for k, v in batch.items() if not k.endswith("_len")}
    full = {**bare, **{f"{m}_len": torch.full((5,), 6) for m in DIMS}}
    with torch.no_grad():
        torch.testing.assert_close(model(bare).pred, model(full).pred)


def test_text_pool_first_reads_the_first_token():
    model = SelfMM(tiny(text_pool="first")).eval()
    batch = make_batch()
    torch.testing.assert_close(model.represent(batch)["t"][0], batch["text"][0, 0])
    assert torch.count_nonzero(model.represent(batch)["t"][-1]) == 0  # length 0


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="subtasks"):
        SelfMM(tiny(subtasks="tx"))
    with pytest.raises(ConfigError, match="post_fusion_dropout"):
        SelfMM(tiny(post_fusion_dropout=1.0))


# --- the memory in checkpoints --------------------------------------------------------------------


def test_label_memory_round_trips_through_a_state_dict():
    model = SelfMM(tiny()).train()
    batch = make_batch()
    for epoch in range(2):
        model.after_backward(model(batch), batch, epoch)
    state = model.state_dict()
    assert state["memory.label_t"].shape == (5,) and state["memory.feat_m"].shape == (5, 8)
    fresh = SelfMM(tiny())
    fresh.load_state_dict(state)
    for k, v in state.items():
        assert torch.equal(fresh.state_dict()[k], v), k


def _split(n: int, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 5, n).astype(np.int64)
    return SplitData(
        ids=np.array([f"{seed}-{i}" for i in range(n)]),
        labels=np.clip(rng.standard_normal(n) * 1.5, -3, 3).astype(np.float32),
        features={m: rng.standard_normal((n, 4, d)).astype(np.float32) for m, d in DIMS.items()},
        lengths=dict.fromkeys(DIMS, lengths),
    )


class Interrupt(Exception):
    pass


def test_resumed_run_equals_uninterrupted_with_the_label_memory(tmp_path):
    spec = {**{f"{m}_dim": d for m, d in DIMS.items()}, "seq_len": 4, "head": "regression"}
    cfg = resolve_run_config(
        "self_mm",
        None,
        "quick",
        input_spec={**spec, "num_classes": 1},
        train_overrides={"epochs": 4, "batch_size": 8, "device": "cpu", "seed": 0},
    )
    splits = {"train": _split(24, 0), "valid": _split(8, 1), "test": _split(8, 2)}
    full = train_model(cfg, splits, checkpoint_dir=tmp_path / "a")

    def stop(epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_model(cfg, splits, checkpoint_dir=tmp_path / "b", callbacks=[stop])
    resumed = train_model(cfg, splits, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    assert full.history[-1]["valid/mae"] == resumed.history[-1]["valid/mae"]
    assert full.epoch_traces == resumed.epoch_traces
    assert full.epoch_traces[-1]["ulgm/gap_t"] > 0  # labels were generated
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert sa["memory.label_t"].shape == (24,)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert full.test == resumed.test  # best.pt (with its memory) loads into a fresh model


# --- parity with the reference --------------------------------------------------------------------

MOSI_SHAPES = {"text_dim": 768, "audio_dim": 5, "vision_dim": 20, "seq_len": 50}


@pytest.mark.parametrize(
    ("preset", "shapes", "reference"),
    [
        # MMSA 2.2.1 (PyPI mmsa==2.2.1), models/multiTask/SELF_MM.py at config_regression.json's
        # mosi values, 768/5/20: 109,641,572 trainable, of which BertTextEncoder (bert-base-uncased)
        # 109,482,240 -> 159,332 without BERT
        ("mmsa", MOSI_SHAPES, 159_332),
        # the same at its mosei values, 768/74/35: 109,647,908 - 109,482,240
        ("mmsa-mosei", {**MOSI_SHAPES, "audio_dim": 74, "vision_dim": 35}, 165_668),
        # the same model class at thuiar/Self-MM's config/config_regression.py mosi values; the
        # authors' models/SELF_MM.py adds two "test" Linear layers no forward uses (17 + 33 never
        # trained): 207,030 there
        ("paper", MOSI_SHAPES, 206_980),
    ],
)
def test_trainable_parameters_equal_the_reference_without_bert(preset, shapes, reference):
    cfg = resolve_run_config(
        "self_mm", "full", preset, input_spec={**shapes, "head": "regression", "num_classes": 1}
    )
    assert count_trainable_params(cfg) == reference


def test_output_keys_and_shapes_correspond_to_the_reference():
    cfg = resolve_run_config(
        "self_mm", "full", "mmsa", input_spec={**MOSI_SHAPES, "head": "regression"}
    ).model_cfg
    model = SelfMM(cfg).eval()
    b, t = 3, 50
    batch = {
        "text": torch.randn(b, t, 768),
        "audio": torch.randn(b, t, 5),
        "vision": torch.randn(b, t, 20),
        **{f"{m}_len": torch.tensor([50, 20, 1]) for m in DIMS},
        "label": torch.zeros(b),
    }
    with torch.no_grad():
        out = model(batch)
    # MMSA's SELF_MM.forward: M, T, A, V (B, 1); Feature_f (B, 128), Feature_t (B, 32),
    # Feature_a (B, 16), Feature_v (B, 32)
    reference = {
        "M": (b, 1),
        "T": (b, 1),
        "A": (b, 1),
        "V": (b, 1),
        "Feature_f": (b, 128),
        "Feature_t": (b, 32),
        "Feature_a": (b, 16),
        "Feature_v": (b, 32),
    }
    assert set(REFERENCE_OUTPUTS) == set(reference)
    for key, ours in REFERENCE_OUTPUTS.items():
        got = out.pred if ours == "pred" else out.extras[ours]
        shape = reference[key]
        assert tuple(got.shape) == (shape if shape[1] != 1 else (b,)), key


def test_registry_presets_and_own_optimiser():
    assert get_spec("self_mm") is SPEC
    assert set(SPEC.variants) == {"full", "no_ulgm", "m_only"}
    cfg = resolve_run_config("self_mm", None, "mmsa", input_spec=MOSI_SHAPES)
    assert cfg.train.batch_size == 64 and cfg.train.weight_decay == pytest.approx(2.5e-4)
    model = SelfMM(cfg.model_cfg)
    groups = model.own_optimizer().param_groups
    assert [g["lr"] for g in groups] == [5e-3, 5e-3]
    own = {id(p) for g in groups for p in g["params"]}
    assert own == {id(p) for p in model.subnets.parameters()}
    assert SelfMM(tiny(audio_lr=0.0, vision_lr=0.0)).own_optimizer() is None
