"""Unimodal baseline: reads only its modality, handles padding and missing modalities, trains."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from msaflow.models.unimodal import SPEC, Unimodal, UnimodalConfig
from msaflow.tasks.config import TrainConfig, apply_overrides

DIMS = {"text": 6, "audio": 5, "vision": 4}


def tiny(**kw) -> UnimodalConfig:
    base = dict(text_dim=6, audio_dim=5, vision_dim=4, hidden=8, dropout=0.0)
    return UnimodalConfig(**{**base, **kw})


def make_batch(b: int = 4, t: int = 7, classes: int = 0, seed: int = 0, modalities=tuple(DIMS)):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for m in modalities:
        batch[m] = torch.randn(b, t, DIMS[m], generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        lengths[0] = t
        batch[f"{m}_len"] = lengths
    batch["label"] = torch.randn(b, generator=g)
    if classes:
        batch["class_label"] = torch.randint(0, classes, (b,), generator=g)
        batch["label"] = batch["class_label"].float()
    return batch


@pytest.mark.parametrize("encoder", ["gru", "mean"])
@pytest.mark.parametrize("modality", ["text", "audio", "vision"])
def test_other_modalities_do_not_change_the_output(encoder, modality):
    torch.manual_seed(0)
    model = Unimodal(tiny(modality=modality, encoder=encoder)).eval()
    batch = make_batch()
    changed = dict(batch)
    for m in DIMS:
        if m != modality:
            changed[m] = torch.randn_like(batch[m]) * 10
            changed[f"{m}_len"] = torch.ones_like(batch[f"{m}_len"])
    mine = dict(batch)
    mine[modality] = batch[modality] + torch.randn_like(batch[modality])
    with torch.no_grad():
        base = model(batch).pred
        torch.testing.assert_close(model(changed).pred, base)
        assert not torch.allclose(model(mine).pred, base)  # its own modality does matter


@pytest.mark.parametrize("encoder", ["gru", "mean"])
def test_works_when_other_modalities_are_missing(encoder):
    cfg = tiny(encoder=encoder, audio_dim=0, vision_dim=0)
    model = Unimodal(cfg)
    batch = make_batch(modalities=("text",))
    assert "audio" not in batch and "vision" not in batch
    total, parts = model.loss(model(batch), batch)
    total.backward()
    assert set(parts) == {"loss/task", "loss/total"} and parts["loss/task"] == parts["loss/total"]
    batch.pop("text_len")  # no lengths: every step counts
    assert model(batch).pred.shape == (4,)


@pytest.mark.parametrize("encoder", ["gru", "mean"])
def test_padding_content_does_not_change_the_output(encoder):
    model = Unimodal(tiny(encoder=encoder)).eval()
    batch = make_batch()
    assert (batch["text_len"] < 7).any()
    noisy = dict(batch)
    noisy["text"] = batch["text"].clone()
    noisy["text"][torch.arange(7)[None, :] >= batch["text_len"][:, None]] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred)


def test_missing_chosen_modality_fails_clearly():
    with pytest.raises(ValueError, match="audio_dim is 0"):
        Unimodal(tiny(modality="audio", audio_dim=0))
    with pytest.raises(ValueError, match="no 'vision' features"):
        Unimodal(tiny(modality="vision"))(make_batch(modalities=("text",)))
    with pytest.raises(ValueError, match="num_classes"):
        Unimodal(tiny(head="classification"))


@pytest.mark.parametrize("variant", list(SPEC.variants))
@pytest.mark.parametrize("head", ["regression", "classification"])
@pytest.mark.parametrize("encoder", ["gru", "mean"])
def test_every_variant_runs_forward_and_backward(variant, head, encoder):
    cfg = apply_overrides(tiny(encoder=encoder, layers=2), SPEC.variants[variant], variant)
    if head == "classification":
        cfg = replace(cfg, head="classification", num_classes=4)
    model = Unimodal(cfg)
    batch = make_batch(classes=4 if head == "classification" else 0)
    out = model(batch)
    assert out.pred.shape == ((4,) if head == "regression" else (4, 4))
    total, parts = model.loss(out, batch)
    total.backward()
    assert math.isfinite(parts["loss/total"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("encoder", ["gru", "mean"])
def test_a_short_training_loop_lowers_the_loss(encoder):
    torch.manual_seed(0)
    batch = make_batch(b=24, seed=2)
    real = (torch.arange(7)[None, :] < batch["text_len"][:, None]).unsqueeze(-1)
    batch["label"] = (batch["text"][..., :2] * real).sum((1, 2)) / real.sum((1, 2))  # learnable
    model = Unimodal(tiny(encoder=encoder))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        total, parts = model.loss(model(batch), batch)
        total.backward()
        opt.step()
        losses.append(parts["loss/total"])
    assert losses[-1] < 0.6 * losses[0]


def test_spec_variants_and_presets_apply_to_the_configs():
    assert SPEC.name == "unimodal" and SPEC.default_variant == "text"
    assert {v["modality"] for v in SPEC.variants.values()} == {"text", "audio", "vision"}
    for name, preset in SPEC.presets.items():
        apply_overrides(UnimodalConfig(), preset["model"], name)
        apply_overrides(TrainConfig(), preset["train"], name)
    assert SPEC.presets["quick"]["train"]["epochs"] == 4
    assert SPEC.presets["paper"]["train"] == {
        "optimizer": "adam",
        "lr": 1e-3,
        "epochs": 30,
        "batch_size": 32,
    }


@pytest.mark.parametrize("encoder", ["gru", "mean"])
@pytest.mark.parametrize("classes", [0, 3])
def test_utterance_level_input_t1(encoder, classes):
    """bc-LSTM CMU-MOSI features have one step per utterance; a zero length still reads step 0."""
    cfg = tiny(
        encoder=encoder,
        modality="audio",
        seq_len=1,
        **({"head": "classification", "num_classes": classes} if classes else {}),
    )
    model = Unimodal(cfg)
    batch = make_batch(t=1, classes=classes)
    out = model(batch)
    assert out.pred.shape == ((4, classes) if classes else (4,))
    model.loss(out, batch)[0].backward()
    batch["audio_len"] = torch.tensor([1, 0, 1, 1])
    assert torch.isfinite(model.eval()(batch).pred).all()
