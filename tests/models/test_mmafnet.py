"""MMAFNet: every equation on hand-made tensors, then the hooks and the model as the engine uses
it."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math

import pytest
import torch

from msaflow.models.base import host_dict
from msaflow.models.mmafnet import (
    SPEC,
    AdaptiveFusion,
    MMAFNet,
    MMAFNetConfig,
    RunningStandardize,
    blend_,
    cmd,
    cosine_distance,
    diff_loss,
    difference_loss,
    ipr_distances,
    ipr_weights,
    masked_mean,
    modulation_ratios,
    probe_accuracy,
    sgm_coefficients,
    sgm_tensors,
    similarity_loss,
    traced_phi,
)
from msaflow.tasks.config import ConfigError, TrainConfig, apply_overrides

DIMS = {"text": 6, "audio": 5, "vision": 4}


def tiny_cfg(**kw) -> MMAFNetConfig:
    base = dict(
        text_dim=6, audio_dim=5, vision_dim=4, seq_len=5, hidden=8, attn_heads=2, dropout=0.0
    )
    return MMAFNetConfig(**{**base, **kw})


def make_batch(B: int = 4, T: int = 5, lengths=None, classes: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths if lengths is not None else [T] * B)
    batch = {name: torch.randn(B, T, d, generator=g) for name, d in DIMS.items()}
    for name in DIMS:
        batch[name] = batch[name] * (torch.arange(T)[None, :, None] < lens[:, None, None])
        batch[f"{name}_len"] = lens.clone()
    batch["label"] = torch.randn(B, generator=g) * 2
    if classes:
        batch["class_label"] = torch.randint(0, classes, (B,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


def model_of(seed: int = 0, **kw) -> MMAFNet:
    torch.manual_seed(seed)
    return MMAFNet(tiny_cfg(**kw))


def grads_of(model: MMAFNet) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def backward(model: MMAFNet, batch: dict):
    out = model(batch)
    total, _ = model.loss(out, batch)
    total.backward()
    return out


# --- eq. 2: CMD and L_sim ------------------------------------------------------------------------


def test_cmd_of_identical_inputs_is_zero_with_finite_gradient():
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 3.0]], requires_grad=True)
    value = cmd(x, x.detach().clone())
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(x.grad).all()


def test_cmd_hand_values():
    x = torch.tensor([[0.0], [2.0]])  # mean 1, centred (-1, 1): c2 = 1, c3 = 0, c4 = 1, c5 = 0
    assert cmd(x, torch.tensor([[1.0], [1.0]]), k=5).item() == pytest.approx(2.0)  # 0 + 1 + 0 + 1
    assert cmd(x, torch.tensor([[3.0], [3.0]]), k=5).item() == pytest.approx(4.0)  # |1 - 3| + 2
    assert cmd(x, torch.tensor([[1.0], [1.0]]), k=2).item() == pytest.approx(1.0)
    # two dimensions: the mean term is a Euclidean norm, sqrt(3^2 + 4^2)
    a, b = torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    assert cmd(a, b, k=5).item() == pytest.approx(5.0)


def test_similarity_loss_averages_the_three_pairs():
    far, near = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]])
    # (a, v) = 0, (a, t) = 2, (v, t) = 2 -> 4 / 3
    assert similarity_loss({"t": far, "a": near, "v": near}).item() == pytest.approx(4.0 / 3.0)
    assert similarity_loss({"t": near, "a": near, "v": near}).item() == 0.0


# --- eq. 3: L_diff -------------------------------------------------------------------------------


def test_diff_loss_orthogonal_is_zero_identical_is_known():
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])  # centred columns with a . b = 0
    assert diff_loss(a, b).item() == pytest.approx(0.0, abs=1e-12)
    x = torch.tensor(
        [[1.0, 0.0], [-1.0, 0.0]]
    )  # normalised rows (+-1, 0): X^T X = [[2, 0], [0, 0]]
    assert diff_loss(x, x).item() == pytest.approx(4.0 / 4.0, rel=1e-5)
    assert diff_loss(3 * x + 7, x).item() == pytest.approx(1.0, rel=1e-5)  # centred and normalised


def test_diff_loss_gradient_is_scale_free_unless_norms_are_detached():
    torch.manual_seed(0)
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    grads = {}
    for detach in (False, True):
        s = torch.tensor(1.0, requires_grad=True)
        value = diff_loss(s * a, b, detach_norm=detach)
        value.backward()
        grads[detach] = s.grad.item()
        assert value.item() == pytest.approx(diff_loss(a, b).item(), rel=1e-5)
    assert grads[False] == pytest.approx(0.0, abs=1e-5)  # nothing gained by shrinking features
    assert grads[True] == pytest.approx(2 * diff_loss(a, b).item(), rel=1e-3)  # MISA: L ~ s^2


def test_difference_loss_sums_intra_and_inter_terms():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    feats = {"t": x, "a": x, "v": x}
    assert difference_loss(feats, feats).item() == pytest.approx(6 * 1.0, rel=1e-5)
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    # invariant orthogonal to specific, specifics identical: 0 + 3 inter terms of (a^T a)^2 = 4^2
    spec = {"t": a, "a": a, "v": a}
    assert difference_loss({"t": b, "a": b, "v": b}, spec).item() == pytest.approx(
        3 * 16.0, rel=1e-5
    )


# --- eqs. 6-9: probe accuracy, omega, phi ---------------------------------------------------------


def test_probe_accuracy_modes():
    pred = torch.tensor([0.5, -0.2, 0.3, 0.9])
    label = torch.tensor([1.0, -2.0, 0.0, -0.1])  # the 0 label is not counted: 2 of 3
    assert probe_accuracy(pred, label, "sign") == pytest.approx(2 / 3)
    assert probe_accuracy(pred, torch.zeros(4), "sign") == 0.0
    pred7 = torch.tensor([0.4, -2.6, 3.9, 1.6])
    label7 = torch.tensor([0.0, -3.0, 2.6, 1.4])  # rounded: 0=0, -3=-3, 3=3, 2!=1
    assert probe_accuracy(pred7, label7, "acc7") == pytest.approx(0.75)
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    assert probe_accuracy(logits, torch.tensor([0, 1]), "class") == pytest.approx(0.5)


def test_modulation_ratios_follow_eq8():
    omega = modulation_ratios({"t": 0.9, "a": 0.6, "v": 0.3})
    assert omega == pytest.approx({"t": 0.5, "a": 1 / 3, "v": 1 / 6})
    assert modulation_ratios({"t": 0.0, "a": 0.0, "v": 0.0}) == pytest.approx(
        {"t": 1 / 3, "a": 1 / 3, "v": 1 / 3}
    )


def test_sgm_coefficients_only_for_the_dominant_modality():
    phi = sgm_coefficients({"t": 0.5, "a": 1 / 3, "v": 1 / 6}, alpha=0.3)
    assert phi["t"] == pytest.approx(1 - math.tanh(0.15)) and phi["t"] == pytest.approx(
        0.851115, abs=1e-6
    )
    assert phi["a"] == 1.0 and phi["v"] == 1.0
    tied = sgm_coefficients(
        {"t": 0.4, "a": 0.4, "v": 0.2}, alpha=0.3, tie="all"
    )  # eq. 9 as printed
    assert tied == pytest.approx({"t": 1 - math.tanh(0.12), "a": 1 - math.tanh(0.12), "v": 1.0})


def test_sgm_ties_follow_ogm_ge_a_full_tie_damps_nothing():
    pair, full = {"t": 0.4, "a": 0.4, "v": 0.2}, dict.fromkeys("tav", 1 / 3)
    damped = 1 - math.tanh(0.3 * 0.4)
    assert sgm_coefficients(pair, 0.3, "none") == dict.fromkeys(
        "tav", 1.0
    )  # default: strict max only
    assert sgm_coefficients(pair, 0.3) == dict.fromkeys("tav", 1.0)
    assert sgm_coefficients(pair, 0.3, "pair") == pytest.approx(
        {"t": damped, "a": damped, "v": 1.0}
    )
    for tie in ("none", "pair"):
        assert sgm_coefficients(full, 0.3, tie) == dict.fromkeys("tav", 1.0)
    assert set(sgm_coefficients(full, 0.3, "all").values()) == {1 - math.tanh(0.1)}  # a uniform cut
    assert SPEC.config_cls().sgm_tie == "none"


# --- eqs. 12-15: IPR -----------------------------------------------------------------------------


def test_cosine_distance_hand_values():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    z2 = torch.tensor([[0.0, 1.0], [2.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([1.0, 0.0, 2.0, 1 - 1 / math.sqrt(2), 1.0])
    assert torch.allclose(cosine_distance(z1, z2), expected, atol=1e-6)
    # sums run over every non-batch element: (B, T, d) is flattened per sample
    seq = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert cosine_distance(seq, seq.flip(-1)).item() == pytest.approx(1.0)


def test_ipr_distances_eq12():
    z = {
        "t": torch.tensor([[1.0, 0.0]]),
        "a": torch.tensor([[0.0, 1.0]]),
        "v": torch.tensor([[1.0, 0.0]]),
    }
    D = ipr_distances(z)  # D(t,a) = 1, D(t,v) = 0, D(a,v) = 1
    assert D["t"].item() == pytest.approx(0.5)
    assert D["a"].item() == pytest.approx(1.0)
    assert D["v"].item() == pytest.approx(0.5)


def test_ipr_weights_clamp_at_delta():
    w = ipr_weights(torch.tensor([0.0, 0.05, 0.5, 1.0]), delta=0.1)
    assert torch.allclose(w, torch.tensor([0.1, 0.1, math.tanh(0.5), math.tanh(1.0)]))


def test_blend_eq15():
    cur, init = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 0.25, -1.0])
    p = cur.clone()
    blend_([p], [init], 1.0)
    assert torch.equal(p, init)
    p = cur.clone()
    blend_([p], [init], 0.0)
    assert torch.equal(p, cur)
    p = cur.clone()
    blend_([p], [init], 0.25)
    assert torch.allclose(p, torch.tensor([0.875, -1.4375, 2.0]))


# --- eqs. 16-17: AFM ----------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["additive", "dot"])
def test_afm_gates_sum_to_one_and_weight_the_concatenation(attention):
    torch.manual_seed(0)
    afm = AdaptiveFusion(3, attention)
    feats = torch.randn(2, 4, 3)
    fused, g = afm(feats)
    assert g.shape == (2, 4) and torch.allclose(g.sum(-1), torch.ones(2))
    assert (g > 0).all()
    expected = torch.cat([g[:, k : k + 1] * feats[:, k] for k in range(4)], dim=-1)
    assert fused.shape == (2, 12) and torch.allclose(fused, expected)
    afm.rescale = True  # afm_rescale: uniform gates would give the plain concatenation
    assert torch.allclose(afm(feats)[0], 4 * expected)


def test_masked_mean_ignores_padding_and_empty_rows():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, mask).flatten().tolist() == [2.0, 0.0]


# --- SGM in after_backward (eq. 10) ---------------------------------------------------------------


def _text_dominant(out, batch):
    """Probe outputs: text always right, audio and vision always wrong (sign mode)."""
    out.extras["probe_t"] = batch["label"].clone()
    out.extras["probe_a"] = -batch["label"]
    out.extras["probe_v"] = -batch["label"]


def test_sgm_scales_exactly_the_dominant_encoder():
    model = model_of(alpha=0.3)
    batch = make_batch()
    out = backward(model, batch)
    before = grads_of(model)
    _text_dominant(out, batch)
    trace = host_dict(model.after_backward(out, batch, epoch=0))
    phi = 1 - math.tanh(0.3 * 1.0)  # rho = (1, 0, 0) -> omega_t = 1
    assert trace["sgm/omega_t"] == 1.0 and trace["sgm/omega_a"] == 0.0
    assert trace["sgm/phi_t"] == pytest.approx(phi) and trace["sgm/phi_a"] == 1.0
    assert trace["probe/acc_t"] == 1.0 and trace["probe/acc_v"] == 0.0
    after = grads_of(model)
    scaled = {n for n, _ in model.named_parameters() if n.startswith("specific.t.")}
    assert scaled and set(before) == set(after)
    for name in before:
        if name in scaled:
            assert torch.allclose(after[name], phi * before[name]), name
            assert not torch.equal(after[name], before[name])
        else:
            assert torch.equal(after[name], before[name]), name


def test_sgm_scope_encoder_conv_also_scales_the_alignment_conv():
    model = model_of(sgm_scope="encoder_conv")
    batch = make_batch()
    out = backward(model, batch)
    before = grads_of(model)
    _text_dominant(out, batch)
    model.after_backward(out, batch, epoch=0)
    phi = 1 - math.tanh(0.3)
    assert torch.allclose(model.align["t"].conv.weight.grad, phi * before["align.t.conv.weight"])
    assert torch.equal(model.align["a"].conv.weight.grad, before["align.a.conv.weight"])


@pytest.mark.parametrize("kw,epoch", [({"sgm": False}, 0), ({"modulation_epochs": 3}, 3)])
def test_gradients_untouched_when_sgm_off_or_after_modulation(kw, epoch):
    model = model_of(**kw)
    batch = make_batch()
    out = backward(model, batch)
    before = grads_of(model)
    _text_dominant(out, batch)
    trace = host_dict(model.after_backward(out, batch, epoch=epoch))
    after = grads_of(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert trace["probe/acc_t"] == 1.0
    if kw.get("sgm") is False:
        assert not any(k.startswith("sgm/") for k in trace)
    else:  # omega still traced, phi reports what was applied: nothing
        assert trace["sgm/omega_t"] == 1.0 and trace["sgm/phi_t"] == 1.0


def test_a_full_tie_damps_nothing_and_the_epoch_trace_counts_ties_and_damping():
    model = model_of()
    batch = make_batch()
    out = backward(model, batch)
    before = grads_of(model)
    for m in "tav":  # every probe equally right: rho, hence omega, tie three ways
        out.extras[f"probe_{m}"] = batch["label"].clone()
    trace = host_dict(model.after_backward(out, batch, epoch=0))
    assert all(torch.equal(before[n], p.grad) for n, p in model.named_parameters() if n in before)
    assert [trace[f"sgm/phi_{m}"] for m in "tav"] == [1.0, 1.0, 1.0]
    out = backward(model, batch)  # a second step, text dominant
    _text_dominant(out, batch)
    model.after_backward(out, batch, epoch=0)
    epoch = model.on_epoch_end(0)
    assert epoch["sgm/tie_rate"] == 0.5
    assert (epoch["sgm/damped_t"], epoch["sgm/damped_a"], epoch["sgm/damped_v"]) == (0.5, 0.0, 0.0)
    assert "sgm/tie_rate" not in model.on_epoch_end(1)  # per epoch: reset


def test_sgm_skips_a_batch_without_countable_labels():
    model = model_of()
    batch = make_batch()
    batch["label"] = torch.zeros(4)
    out = backward(model, batch)
    before = grads_of(model)
    trace = host_dict(model.after_backward(out, batch, epoch=0))
    assert all(torch.equal(before[n], p.grad) for n, p in model.named_parameters() if n in before)
    assert trace["sgm/phi_t"] == trace["sgm/phi_a"] == trace["sgm/phi_v"] == 1.0


# --- SGM on the device (issue 19) ----------------------------------------------------------------


@pytest.mark.parametrize("tie", ["none", "pair", "all"])
def test_sgm_tensors_equal_the_python_equations_on_every_small_batch(tie):
    """Every (hits_t, hits_a, hits_v, counted) of batches up to 7 countable labels: rho and omega
    are the Python functions' values exactly, phi damps the same modalities by the same amount
    (to the last bit or so of a double), and ``traced_phi`` is ``sgm_coefficients`` exactly."""
    alpha = 0.3
    for counted in range(8):
        for h in itertools.product(range(counted + 1), repeat=3):
            rho, omega, phi = sgm_tensors(torch.tensor(h), torch.tensor(counted), alpha, tie)
            acc = {m: (h[i] / counted if counted else 0.0) for i, m in enumerate("tav")}
            assert rho.tolist() == list(acc.values())
            w = modulation_ratios(acc)
            assert omega.tolist() == list(w.values()), (h, counted)
            expected = sgm_coefficients(w, alpha, tie)
            assert [x != 1.0 for x in phi.tolist()] == [x != 1.0 for x in expected.values()]
            assert phi.tolist() == pytest.approx(list(expected.values()), rel=1e-15, abs=0)
            assert [traced_phi(m, alpha, tie, *omega.tolist(), 1.0) for m in "tav"] == list(
                expected.values()
            )


def test_after_backward_traces_the_values_of_the_python_equations():
    """The hook's trace, read back, holds what eqs. 6-9's Python functions give for the batch's
    probe outputs (the trace before the hook moved to the device), under the same names."""
    model = model_of(alpha=0.7, sgm_tie="pair")
    for seed in range(5):
        batch = make_batch(B=9, seed=seed)
        out = backward(model, batch)
        trace = host_dict(model.after_backward(out, batch, epoch=0))
        acc = {m: probe_accuracy(out.extras[f"probe_{m}"], batch["label"], "sign") for m in "tav"}
        omega = modulation_ratios(acc)
        phi = sgm_coefficients(omega, 0.7, "pair")
        assert trace == {
            **{f"probe/acc_{m}": acc[m] for m in "tav"},
            **{f"sgm/omega_{m}": omega[m] for m in "tav"},
            **{f"sgm/phi_{m}": phi[m] for m in "tav"},
        }


@contextlib.contextmanager
def no_host_reads():
    """Every way a tensor's value reaches Python raises inside (a device sync on a GPU)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor's value was read on the host")

    names = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_no_host_reads_can_fail():
    with no_host_reads(), pytest.raises(AssertionError, match="read on the host"):
        float(torch.ones(()))
    assert float(torch.ones(())) == 1.0  # restored


@pytest.mark.parametrize("kw", [{}, {"head": "classification", "num_classes": 3}])
def test_training_step_reads_nothing_back_from_the_device(kw):
    """forward, loss and after_backward of a training step (SGM, IPR and AFM on) keep every value
    on the device; the epoch's end reads the counters once."""
    model = model_of(**kw)
    model.train()
    classes = kw.get("num_classes", 0)
    backward(model, make_batch(classes=classes))  # RunningStandardize reads its count once
    model.zero_grad()
    for seed in range(3):
        batch = make_batch(seed=seed, classes=classes)
        with no_host_reads():
            out = model(batch)
            total, parts = model.loss(out, batch)
            total.backward()
            trace = model.after_backward(out, batch, epoch=0)
        assert all(math.isfinite(v) for v in host_dict({**parts, **trace}).values())
    assert model.on_epoch_end(0)["sgm/tie_rate"] >= 0


def test_running_standardize_rereads_its_count_after_a_load():
    """The count is read once, then tracked on the host; a load resets that, so a probe resumed
    from a checkpoint with statistics keeps them (momentum) instead of restarting (weight 1)."""
    trained = RunningStandardize(2)
    trained.train()
    trained(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    fresh = RunningStandardize(2)
    fresh.train()
    fresh(torch.zeros(2, 2))  # a fresh module: started, on the host
    fresh.load_state_dict(trained.state_dict())
    before = fresh.mean.clone()
    fresh(torch.tensor([[11.0, 12.0], [13.0, 14.0]]))
    assert torch.allclose(fresh.mean, before.lerp(torch.tensor([12.0, 13.0]), 0.1))
    assert int(fresh.count) == 2


# --- IPR at on_epoch_end (eqs. 12-15) -------------------------------------------------------------


def _flat_distance_means(outs, batches) -> torch.Tensor:
    """Independent eq. 12-13 ('flattened'): F.cosine_similarity on padding-zeroed sequences."""
    per_sample = []
    for out, batch in zip(outs, batches, strict=True):
        z = {}
        for name, m in (("text", "t"), ("audio", "a"), ("vision", "v")):
            mask = (
                torch.arange(out.extras[f"zc_{m}"].shape[1])[None, :]
                < batch[f"{name}_len"][:, None]
            )
            z[m] = (out.extras[f"zc_{m}"] * mask[..., None]).flatten(1).detach()
        cos = torch.nn.functional.cosine_similarity
        per_sample.append(
            torch.stack(
                [
                    ((1 - cos(z["t"], z["a"])) + (1 - cos(z["t"], z["v"]))) / 2,
                    ((1 - cos(z["a"], z["t"])) + (1 - cos(z["a"], z["v"]))) / 2,
                    ((1 - cos(z["v"], z["t"])) + (1 - cos(z["v"], z["a"]))) / 2,
                ],
                dim=1,
            )
        )
    return torch.cat(per_sample).mean(0)


def test_ipr_blends_towards_init_with_the_epochs_mean_distances():
    model = model_of()
    init = {m: [t.clone() for t in model.ipr_init[m].tensors()] for m in "tav"}
    with torch.no_grad():  # move away from init so the blend is visible
        for p in model.attn.parameters():
            p.add_(0.5)
    cur = {m: [p.detach().clone() for p in model.attn[m].parameters()] for m in "tav"}
    model.train()
    batches = [make_batch(seed=1), make_batch(B=3, seed=2)]
    outs = [model(b) for b in batches]
    trace = model.on_epoch_end(0)
    # the reset waits for the next epoch: what the engine validates is the trained model
    assert all(
        torch.equal(p, pc)
        for m in "tav"
        for p, pc in zip(model.attn[m].parameters(), cur[m], strict=True)
    )
    model.before_epoch(1)
    assert float(model.ipr_pending.abs().sum()) == 0.0  # applied once
    expected_d = _flat_distance_means(outs, batches)
    for i, m in enumerate("tav"):
        assert trace[f"ipr/dist_{m}"] == pytest.approx(float(expected_d[i]), abs=1e-5)
        phi = max(math.tanh(trace[f"ipr/dist_{m}"]), 0.1)
        assert trace[f"ipr/phi_{m}"] == pytest.approx(phi, abs=1e-6)
        for p, p0, pc in zip(model.attn[m].parameters(), init[m], cur[m], strict=True):
            assert torch.allclose(p, phi * p0 + (1 - phi) * pc, atol=1e-6)
            assert (p - p0).abs().sum() < (pc - p0).abs().sum()  # closer to init
    assert model.on_epoch_end(1) == {}  # accumulators were reset, nothing new seen


def test_ipr_closeness_weighting_and_eval_forwards_do_not_count():
    model = model_of(ipr_weighting="closeness")
    model.eval()
    model(make_batch())
    assert "ipr/dist_t" not in model.on_epoch_end(0)
    model.train()
    model(make_batch())
    trace = model.on_epoch_end(0)
    assert trace["ipr/phi_t"] == pytest.approx(
        max(1 - math.tanh(trace["ipr/dist_t"]), 0.1), abs=1e-6
    )


@pytest.mark.parametrize("kw,epoch", [({"ipr": False}, 0), ({"modulation_epochs": 2}, 2)])
def test_ipr_does_nothing_when_off_or_after_modulation(kw, epoch):
    model = model_of(**kw)
    with torch.no_grad():
        for p in model.attn.parameters():
            p.add_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(make_batch())
    trace = model.on_epoch_end(epoch)
    model.before_epoch(epoch + 1)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    if kw.get("ipr") is False:
        assert not any(k.startswith("ipr/") for k in trace)
    else:
        assert trace["ipr/phi_t"] == 0.0 and trace["ipr/dist_t"] > 0


def _unaligned_batch(B: int = 3, seed: int = 0) -> dict:
    """Text of 5 frames, audio of 7, vision of 3 (as unaligned MOSI stores hold)."""
    g = torch.Generator().manual_seed(seed)
    T = {"text": 5, "audio": 7, "vision": 3}
    batch = {name: torch.randn(B, T[name], d, generator=g) for name, d in DIMS.items()}
    for name in DIMS:
        batch[f"{name}_len"] = torch.full((B,), T[name])
    batch["label"] = torch.randn(B, generator=g)
    return batch


def test_flattened_ipr_on_unaligned_data_uses_the_pooled_distance_and_says_so():
    batch = _unaligned_batch()
    traces = {}
    for distance in ("flattened", "pooled"):
        model = model_of(ipr_distance=distance)
        model.train()
        model(batch)  # "flattened" raised a bare RuntimeError here (sizes 5d vs 7d)
        traces[distance] = model.on_epoch_end(0)
    flat, pooled = traces["flattened"], traces["pooled"]
    assert flat["ipr/pooled_fallback"] == 1.0 and "ipr/pooled_fallback" not in pooled
    for m in "tav":
        assert flat[f"ipr/dist_{m}"] == pooled[f"ipr/dist_{m}"]
    aligned = model_of()
    aligned.train()
    aligned(make_batch())
    assert "ipr/pooled_fallback" not in aligned.on_epoch_end(0)


def test_probes_have_their_own_optimiser_and_standardised_inputs():
    model = model_of()
    own = model.own_optimizer()
    assert isinstance(own, torch.optim.Adam) and own.param_groups[0]["lr"] == 1e-2
    owned = {id(p) for g in own.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.probes.parameters()}
    assert isinstance(model_of(probe_optimizer="sgd").own_optimizer(), torch.optim.SGD)
    assert model_of(probe_optimizer="main").own_optimizer() is None
    with pytest.raises(ConfigError, match="probe_lr"):
        model_of(probe_lr=0.0)
    batch = make_batch(B=4)
    one = {k: v[:1] for k, v in batch.items()}
    model.train()  # running statistics: a batch of one trains, and a sample's output is batch-free
    model(one)
    model.eval()
    with torch.no_grad():
        alone, among = model(one).extras["probe_t"], model(batch).extras["probe_t"]
    assert torch.allclose(alone[0], among[0], atol=1e-6)


def test_epoch_trace_has_afm_gate_means_and_probe_accuracies():
    model = model_of()
    model.train()
    batch = make_batch()
    out = backward(model, batch)
    _text_dominant(out, batch)
    model.after_backward(out, batch, 0)
    gates = out.extras["afm_gates"].detach().mean(0)
    trace = model.on_epoch_end(0)
    assert [trace[f"afm/g_{k}"] for k in "tavc"] == pytest.approx(gates.tolist(), abs=1e-6)
    assert sum(trace[f"afm/g_{k}"] for k in "tavc") == pytest.approx(1.0)
    assert trace["probe/epoch_acc_t"] == 1.0 and trace["probe/epoch_acc_a"] == 0.0
    no_afm = model_of(afm=False)
    no_afm(make_batch())
    assert not any(k.startswith("afm/") for k in no_afm.on_epoch_end(0))


# --- the model as a whole -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(SPEC.variants))
@pytest.mark.parametrize("classes", [0, 3])
def test_variants_forward_and_backward_without_nans(variant, classes):
    head = {"head": "classification", "num_classes": 3} if classes else {}
    model = model_of(**SPEC.variants[variant], **head, dropout=0.1)
    model.train()
    batch = make_batch(B=2, lengths=[0, 1], classes=classes)
    out = model(batch)
    assert out.pred.shape == ((2, 3) if classes else (2,))
    total, parts = model.loss(out, batch)
    total.backward()
    assert torch.isfinite(out.pred).all() and math.isfinite(float(total.detach()))
    assert set(parts) == {"loss/task", "loss/sim", "loss/diff", "loss/probe", "loss/total"}
    # 0-dim tensors, detached, left on the device: the engine reads them once per epoch
    assert all(v.dim() == 0 and not v.requires_grad for v in parts.values())
    parts = {k: float(v) for k, v in parts.items()}
    assert all(math.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    cfg = model.cfg
    expected = (
        parts["loss/task"]
        + cfg.lambda1 * parts["loss/sim"]
        + cfg.lambda2 * parts["loss/diff"]
        + cfg.probe_weight * parts["loss/probe"]
    )
    assert parts["loss/total"] == pytest.approx(expected, rel=1e-5)
    model.after_backward(out, batch, 0)
    assert all(math.isfinite(v) for v in model.on_epoch_end(0).values())
    model.eval()  # inference path (attention fast path) with the same short rows
    with torch.no_grad():
        assert torch.isfinite(model(batch).pred).all()


@pytest.mark.parametrize(
    "kw",
    [
        {"decouple_features": "frames"},
        {"ipr_distance": "pooled"},
        {"invariant_fusion": "concat"},
        {"probe_accuracy": "acc7"},
        {"probe_detach": False},
        {"probe_norm": False, "probe_optimizer": "main"},
        {"sgm_tie": "pair"},
        {"sgm_tie": "all"},
    ],
)
def test_alternative_choices_run(kw):
    model = model_of(**kw)
    model.train()
    batch = make_batch(B=3, lengths=[5, 2, 0])
    out = backward(model, batch)
    trace = model.after_backward(out, batch, 0)
    assert all(math.isfinite(v) for v in {**trace, **model.on_epoch_end(0)}.values())


def test_probe_detach_keeps_probe_loss_out_of_the_encoders():
    batch = make_batch()
    grads = {}
    for weight in (1.0, 5.0):
        model = model_of(probe_weight=weight)
        backward(model, batch)
        grads[weight] = model.specific["t"].net[0].weight.grad.clone()
    assert torch.equal(grads[1.0], grads[5.0])


def test_short_training_loop_reduces_the_loss():
    torch.manual_seed(0)
    model = MMAFNet(tiny_cfg(modulation_epochs=2))  # full: SGM, IPR and AFM all active
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = []
    for s in range(4):  # every modality carries a per-sample offset c, the label is 2c
        b = make_batch(B=16, seed=s)
        c = torch.linspace(-1, 1, 16)[
            torch.randperm(16, generator=torch.Generator().manual_seed(s))
        ]
        for name in DIMS:
            b[name] = 0.5 * b[name] + c[:, None, None]
        b["label"] = 2 * c
        batches.append(b)

    def task_loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return sum(model.loss(model(b), b)[1]["loss/task"] for b in batches) / len(batches)

    first = task_loss_now()
    for epoch in range(6):  # the engine's call order
        model.train()
        for b in batches:
            opt.zero_grad(set_to_none=True)
            out = model(b)
            total, _ = model.loss(out, b)
            total.backward()
            model.after_backward(out, b, epoch)
            opt.step()
        model.on_epoch_end(epoch)
        model.before_epoch(epoch + 1)
    assert task_loss_now() < 0.5 * first


def test_state_dict_carries_theta_init_and_reloads_exactly():
    model = model_of(seed=0)
    init = {n: b.clone() for n, b in model.state_dict().items() if n.startswith("ipr_init.")}
    attn_names = [f"attn.t.{n}" for n, _ in model.attn["t"].named_parameters()]
    assert len(init) == 3 * len(attn_names)
    assert torch.equal(init["ipr_init.t.attn__in_proj_weight"], model.attn["t"].attn.in_proj_weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    batch = make_batch()
    backward(model, batch)
    opt.step()
    model.on_epoch_end(0)  # as the engine: the checkpoint is written before the reset it decided
    assert float(model.ipr_pending.min()) > 0 and "ipr_pending" in model.state_dict()
    assert not torch.equal(
        model.attn["t"].attn.in_proj_weight, init["ipr_init.t.attn__in_proj_weight"]
    )
    assert all(torch.equal(init[n], b) for n, b in model.state_dict().items() if n in init)

    other = model_of(seed=123)  # different initial weights and theta_init
    other.load_state_dict(model.state_dict())
    model.eval()
    other.eval()
    assert torch.equal(model(batch).pred, other(batch).pred)
    for m in (model, other):  # the pending reset, then another, from the reloaded theta_init
        m.before_epoch(1)
        m.train()
        with torch.no_grad():
            m(batch)
        m.on_epoch_end(1)
        m.before_epoch(2)
    a, b = model.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="hidden"):
        MMAFNet(tiny_cfg(hidden=9, attn_heads=2))
    with pytest.raises(ConfigError, match="ipr_distance"):
        MMAFNet(tiny_cfg(ipr_distance="mean"))


# --- SPEC ---------------------------------------------------------------------------------------


def test_spec_variants_and_presets_apply_to_the_configs():
    assert (
        set(SPEC.variants) == {"none", "sgm", "sgm_ipr", "full"} and SPEC.default_variant == "full"
    )
    switches = {v: (o["sgm"], o["ipr"], o["afm"]) for v, o in SPEC.variants.items()}
    assert switches == {
        "none": (False, False, False),
        "sgm": (True, False, False),
        "sgm_ipr": (True, True, False),
        "full": (True, True, True),
    }
    for preset in SPEC.presets.values():
        assert set(preset) <= {"model", "train"}
        cfg = apply_overrides(MMAFNetConfig(), preset.get("model", {}), "model")
        apply_overrides(TrainConfig(), preset.get("train", {}), "train")
        for overrides in SPEC.variants.values():
            apply_overrides(cfg, overrides, "variant")
    paper = SPEC.presets["paper"]
    assert paper["train"] == {"optimizer": "sgd", "lr": 1e-4, "epochs": 50, "batch_size": 32}
    cfg = apply_overrides(MMAFNetConfig(), paper["model"], "model")
    assert (cfg.lambda1, cfg.lambda2, cfg.alpha, cfg.delta, cfg.modulation_epochs) == (
        0.1,
        0.01,
        0.3,
        0.1,
        25,
    )
    assert dataclasses.asdict(cfg) == dataclasses.asdict(MMAFNetConfig())  # defaults = paper
    quick = SPEC.presets["quick"]
    assert quick["model"]["modulation_epochs"] < quick["train"]["epochs"]


def test_paper_preset_text_probe_is_the_most_accurate_after_one_epoch(tmp_path):
    """On sim-mosi text is the planted strong modality: the probes must see it within an epoch of
    the paper's SGD lr 1e-4 (before, they sat at chance and initialisation picked the damped
    one)."""
    from msaflow.feature_store import load_dataset, synthesize
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import train_model

    synthesize("mosi", tmp_path / "sim", seed=0, scale=0.25)  # 321 training utterances, 11 steps
    manifest, splits = load_dataset(tmp_path / "sim")
    cfg = resolve_run_config(
        "mmafnet", "full", "paper", train_overrides={"epochs": 1}, input_spec=manifest.input_spec()
    )
    epoch = train_model(cfg, splits, evaluate_test=False).epoch_traces[0]
    acc = {m: epoch[f"probe/epoch_acc_{m}"] for m in "tav"}
    assert acc["t"] > max(acc["a"], acc["v"]), acc
    assert min(acc.values()) > 0.6, acc  # every probe learns, none sits at the majority sign
    assert epoch["sgm/tie_rate"] < 0.5 and epoch["sgm/damped_t"] > 0
