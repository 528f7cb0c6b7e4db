"""The training loop of issues 18 and 19: steps that read nothing back from the device, gradient
accumulation, learning-rate schedules, and that the defaults are the loop they replaced."""

import dataclasses
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch

from msaflow.feature_store import load_dataset
from msaflow.models.mmafnet import modulation_ratios, sgm_coefficients
from msaflow.tasks.config import ConfigError, resolve_run_config
from msaflow.tasks.data import iterate_batches, split_to_tensors, standardize_splits
from msaflow.tasks.train import (
    CHECKPOINT_VERSION,
    build_model,
    build_optimizer,
    load_checkpoint,
    lr_factor,
    optimizer_steps_per_epoch,
    seed_everything,
    train_model,
)


@pytest.fixture(scope="module")
def tiny(tiny_sim):
    return load_dataset(tiny_sim)  # 64 train rows


def _cfg(manifest, model="mmafnet", variant=None, model_overrides=None, **train):
    return resolve_run_config(
        model,
        variant,
        "quick",
        model_overrides=model_overrides,
        train_overrides={"epochs": 3, "batch_size": 16, **train},
        input_spec=manifest.input_spec(),
    )


def _weights(ckpt_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt_dir / "last.pt", ("model",))["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_time(history):
    return [{k: v for k, v in r.items() if k != "time/epoch_s"} for r in history]


# --- the defaults are the loop before issues 18/19 ------------------------------------------------


def _plain_loop(cfg, splits) -> dict[str, torch.Tensor]:
    """The engine's loop as it was, written out: zero_grad, forward, loss, backward, the model's
    hook, norm clip, both optimisers' steps, one batch at a time, the same seeds and batches."""
    t = cfg.train
    seed_everything(t.seed)
    model = build_model(cfg)
    own = model.own_optimizer()
    own_params = [p for g in own.param_groups for p in g["params"]] if own else []
    opt = build_optimizer(model, cfg, exclude=own_params)
    main_params = [p for g in opt.param_groups for p in g["params"]]
    train_t = split_to_tensors(standardize_splits(splits)[0]["train"])
    for epoch in range(t.epochs):
        model.before_epoch(epoch)
        model.train()
        for batch in iterate_batches(
            train_t, t.batch_size, torch.device("cpu"), shuffle=True, seed=t.seed * 100_003 + epoch
        ):
            opt.zero_grad(set_to_none=True)
            if own is not None:
                own.zero_grad(set_to_none=True)
            out = model(batch)
            total, _ = model.loss(out, batch)
            total.backward()
            model.after_backward(out, batch, epoch)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(main_params, t.grad_clip)
            opt.step()
            if own is not None:
                own.step()
        model.on_epoch_end(epoch)
    return model.state_dict()


@pytest.mark.parametrize(
    ("model", "variant", "train"),
    [
        ("mmafnet", "full", {}),  # SGM (own optimiser, gradient scaling), IPR, AFM
        ("mmafnet", "sgm", {"optimizer": "sgd", "lr": 0.01, "grad_clip": 0.5}),
        ("earlyfusion", None, {"grad_clip": 0.1}),
    ],
)
def test_defaults_train_exactly_the_weights_of_the_plain_loop(
    tiny, tmp_path, model, variant, train
):
    manifest, splits = tiny
    cfg = _cfg(manifest, model, variant, **train)
    assert (cfg.train.grad_accum_steps, cfg.train.lr_schedule) == (1, "constant")
    train_model(cfg, splits, checkpoint_dir=tmp_path, evaluate_test=False)
    engine = _weights(tmp_path)
    plain = _plain_loop(cfg, splits)
    assert _same_weights(engine, plain)
    assert load_checkpoint(tmp_path / "last.pt")["scheduler"] is None  # no scheduler is built


def test_per_step_syncs_change_nothing_but_the_time(tiny, tmp_path):
    """``sync_every_step`` reads every step back (the loop before issue 19): the same weights, the
    same history and the same per-step and per-epoch traces, float for float."""
    manifest, splits = tiny
    runs = {}
    for sync in (False, True):
        cfg = _cfg(manifest, sync_every_step=sync)
        runs[sync] = train_model(cfg, splits, checkpoint_dir=tmp_path / str(sync))
    a, b = runs[False], runs[True]
    assert _no_time(a.history) == _no_time(b.history) and a.test == b.test
    assert a.step_traces == b.step_traces and a.epoch_traces == b.epoch_traces
    assert all(type(v) is float for row in a.step_traces for k, v in row.items() if "/" in k)
    assert _same_weights(_weights(tmp_path / "False"), _weights(tmp_path / "True"))


def test_sgm_step_traces_hold_the_equations_values(tiny):
    """Per step, omega and phi are exactly what eqs. 8-9's Python functions give for the traced
    accuracies (the values MLflow got before the hook moved to the device), names unchanged."""
    manifest, splits = tiny
    result = train_model(_cfg(manifest, epochs=2), splits, evaluate_test=False)
    assert len(result.step_traces) == 8  # 4 batches x 2 epochs, one row each
    keys = {"step", "epoch"} | {
        f"{g}_{m}" for g in ("probe/acc", "sgm/omega", "sgm/phi") for m in "tav"
    }
    cfg = _cfg(manifest).model_cfg
    for i, row in enumerate(result.step_traces):
        assert set(row) == keys and row["step"] == i and row["epoch"] == i // 4
        omega = modulation_ratios({m: row[f"probe/acc_{m}"] for m in "tav"})
        assert {m: row[f"sgm/omega_{m}"] for m in "tav"} == omega
        phi = sgm_coefficients(omega, cfg.alpha, cfg.sgm_tie)
        assert {m: row[f"sgm/phi_{m}"] for m in "tav"} == phi


# --- a non-finite loss ----------------------------------------------------------------------------


def _poisoned(splits, row: int):
    """``splits`` with a NaN in one training row's text features."""
    train = splits["train"]
    text = train.features["text"].copy()
    text[row, 0, 0] = np.nan
    return {
        **splits,
        "train": dataclasses.replace(train, features={**train.features, "text": text}),
    }


@pytest.mark.parametrize("train", [{}, {"sync_every_step": True}, {"grad_accum_steps": 3}])
def test_nonfinite_loss_names_the_run_epoch_and_first_bad_step(tiny, tmp_path, train):
    manifest, splits = tiny
    cfg = _cfg(manifest, "earlyfusion", standardize=False, **train)
    row = 37
    order = torch.randperm(64, generator=torch.Generator().manual_seed(cfg.train.seed * 100_003))
    step = int((order == row).nonzero()) // cfg.train.batch_size  # the batch that holds the row
    message = f"{cfg.run_name}: loss became nan at epoch 0, step {step}"
    with pytest.raises(FloatingPointError, match=f"^{re.escape(message)}$"):
        train_model(cfg, _poisoned(splits, row), checkpoint_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


# --- gradient accumulation ------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "accum"), [(4, 4), (6, 3)])
def test_accumulating_k_batches_equals_one_batch_of_their_rows(tiny, tmp_path, batch, accum):
    """A plain model (no dropout, nothing that depends on the batch), plain SGD so the step is
    proportional to the gradient, and a norm clip that bites: k batches of b accumulated equal one
    batch of k * b rows, also for an epoch's shorter last group (64 rows in batches of 6: groups of
    18, 18, 18 and 10 rows)."""
    manifest, splits = tiny
    common = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "grad_clip": 0.05, "epochs": 2}
    plain = {"dropout": 0.0}
    small = _cfg(
        manifest, "earlyfusion", None, plain, batch_size=batch, grad_accum_steps=accum, **common
    )
    big = _cfg(manifest, "earlyfusion", None, plain, batch_size=batch * accum, **common)
    a = train_model(small, splits, checkpoint_dir=tmp_path / "a", evaluate_test=False)
    b = train_model(big, splits, checkpoint_dir=tmp_path / "b", evaluate_test=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    init = build_model(big).state_dict()
    assert any(not torch.allclose(wb[k], init[k]) for k in wb), "the weights moved"
    # the epoch's train loss is the mean over its rows, however they are grouped
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra["train/loss/total"] == pytest.approx(rb["train/loss/total"], rel=1e-5)


def test_accumulation_weights_batches_by_their_share_of_the_groups_rows(tiny, tmp_path):
    """k larger than the epoch's 4 batches makes one group of them all: it equals one batch of the
    epoch (a loss scaled by 1/k = 1/9 instead of each batch's share, 1/4, would not), as k = 4 does;
    k = 2 (two steps) does not."""
    manifest, splits = tiny
    common = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "epochs": 1}
    plain = {"dropout": 0.0}
    runs = {}
    for name, bs, k in (("k2", 16, 2), ("k4", 16, 4), ("one", 64, 1), ("k9", 16, 9)):
        cfg = _cfg(
            manifest, "earlyfusion", None, plain, batch_size=bs, grad_accum_steps=k, **common
        )
        train_model(cfg, splits, checkpoint_dir=tmp_path / name, evaluate_test=False)
        runs[name] = _weights(tmp_path / name)
    for k in runs["one"]:
        torch.testing.assert_close(runs["k4"][k], runs["one"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(runs["k9"][k], runs["one"][k], rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(runs["k2"][k], runs["one"][k]) for k in runs["one"])


def _accumulating_loop(cfg, splits, bank: bool) -> dict[str, torch.Tensor]:
    """Accumulation written out: each batch's loss weighted by its share of the group's rows. With
    ``bank`` each batch's gradient is set aside after its hook (the engine's way: the hook sees
    that batch's gradient alone); without, the hook sees the group's running sum."""
    t = cfg.train
    seed_everything(t.seed)
    model = build_model(cfg)
    own = model.own_optimizer()
    own_params = [p for g in own.param_groups for p in g["params"]] if own else []
    opt = build_optimizer(model, cfg, exclude=own_params)
    params = [p for p in model.parameters() if p.requires_grad]
    train_t = split_to_tensors(standardize_splits(splits)[0]["train"])
    for epoch in range(t.epochs):
        model.before_epoch(epoch)
        model.train()
        batches = list(
            iterate_batches(
                train_t, t.batch_size, torch.device("cpu"), True, t.seed * 100_003 + epoch
            )
        )
        for g in range(0, len(batches), t.grad_accum_steps):
            group = batches[g : g + t.grad_accum_steps]
            rows = sum(len(b["label"]) for b in group)
            opt.zero_grad(set_to_none=True)
            own.zero_grad(set_to_none=True)
            summed: dict[int, torch.Tensor] = {}
            for b in group:
                out = model(b)
                total, _ = model.loss(out, b)
                (total * (len(b["label"]) / rows)).backward()
                model.after_backward(out, b, epoch)
                for i, p in enumerate(params):
                    if bank and p.grad is not None:
                        summed[i] = p.grad if i not in summed else summed[i] + p.grad
                        p.grad = None
            for i, grad in summed.items():
                params[i].grad = grad
            opt.step()
            own.step()
        model.on_epoch_end(epoch)
    return model.state_dict()


def test_sgm_modulates_each_batch_of_a_group_with_its_own_phi(tiny, tmp_path):
    """With accumulation SGM's hook scales each batch's own gradient by that batch's phi before it
    joins the group's (the docstring's choice): the engine equals that loop exactly, and not the
    loop whose hook would scale the group's running sum."""
    manifest, splits = tiny
    cfg = _cfg(manifest, "mmafnet", "sgm", grad_accum_steps=2)
    result = train_model(cfg, splits, checkpoint_dir=tmp_path, evaluate_test=False)
    assert len(result.step_traces) == 12  # one row per batch, 4 batches x 3 epochs
    assert any(r["sgm/phi_t"] < 1 or r["sgm/phi_a"] < 1 for r in result.step_traces[1::2])
    engine = _weights(tmp_path)
    assert _same_weights(engine, _accumulating_loop(cfg, splits, bank=True))
    assert not _same_weights(engine, _accumulating_loop(cfg, splits, bank=False))


# --- learning-rate schedules ----------------------------------------------------------------------


def test_lr_factor_at_given_steps():
    # constant: 1 everywhere; a warmup of 4 ramps 1/4, 2/4, 3/4, 1, then 1
    assert [lr_factor(s, 10, 0, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # linear over 10 steps after a warmup of 2: p = (s - 2) / 8
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    # cosine without warmup: 1 at 0, 1/2 half way, (1 + cos(pi 3/4)) / 2 at 3/4
    assert lr_factor(0, 8, 0, "cosine") == 1.0
    assert lr_factor(4, 8, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 8, 0, "cosine") == pytest.approx((1 + math.cos(0.75 * math.pi)) / 2)
    assert all(lr_factor(s, 8, 3, sched) > 0 for s in range(8) for sched in ("linear", "cosine"))
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        lr_factor(0, 8, 0, "step")


def test_optimizer_steps_per_epoch_counts_the_shorter_last_group(tiny):
    manifest, _ = tiny
    steps = [
        optimizer_steps_per_epoch(64, _cfg(manifest, batch_size=b, grad_accum_steps=k).train)
        for b, k in ((16, 1), (16, 3), (6, 3), (64, 2))
    ]
    assert steps == [4, 2, 4, 1]


def test_schedule_sets_the_rate_of_every_optimizer_step_and_not_the_own_optimizers(tiny, tmp_path):
    """After each epoch ``last.pt`` holds the rate of the next optimiser step: lr x
    lr_factor(steps so far); the SGM probes' own Adam keeps probe_lr."""
    manifest, splits = tiny
    cfg = _cfg(manifest, epochs=3, grad_accum_steps=3, lr_schedule="cosine", warmup_epochs=1)
    per_epoch = optimizer_steps_per_epoch(64, cfg.train)  # 4 batches in groups of 3: 2 steps
    rates = []

    def read_rate(epoch, record):
        state = load_checkpoint(tmp_path / "last.pt")
        rates.append((state["optimizer"]["param_groups"][0]["lr"], state["own_optimizer"]))

    train_model(cfg, splits, checkpoint_dir=tmp_path, callbacks=[read_rate], evaluate_test=False)
    total = 3 * per_epoch
    for epoch, (lr, own) in enumerate(rates):
        expected = cfg.train.lr * lr_factor((epoch + 1) * per_epoch, total, per_epoch, "cosine")
        assert lr == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert own["param_groups"][0]["lr"] == cfg.model_cfg.probe_lr
    assert rates[0][0] == pytest.approx(cfg.train.lr)  # the end of the warmup: the full rate


@pytest.mark.parametrize(
    "train",
    [
        {"lr_schedule": "cosine", "warmup_epochs": 0.5},
        {"grad_accum_steps": 3},
        {"lr_schedule": "linear", "warmup_epochs": 1, "grad_accum_steps": 3},
    ],
)
def test_resume_with_a_schedule_or_accumulation_equals_uninterrupted(
    tiny, tmp_path, train, train_killed_then_resumed
):
    """Killed after epoch 1 and resumed: the history, traces, weights and the scheduler's state
    are those of the uninterrupted run."""
    manifest, splits = tiny
    cfg = _cfg(manifest, **train)
    full = train_model(cfg, splits, checkpoint_dir=tmp_path / "a", evaluate_test=False)
    resumed = train_killed_then_resumed(cfg, splits, tmp_path / "b", evaluate_test=False)
    assert resumed.resumed_from_epoch == 2
    assert _no_time(full.history) == _no_time(resumed.history)
    assert full.step_traces == resumed.step_traces and full.epoch_traces == resumed.epoch_traces
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert _same_weights(a["model"], b["model"])
    assert a["scheduler"] == b["scheduler"]
    assert (a["scheduler"] is None) == ("lr_schedule" not in train)


def test_a_checkpoint_of_the_code_before_schedules_gets_the_existing_error(tiny, tmp_path):
    """Version 2 was kept: a ``last.pt`` written before these fields (no "scheduler" key, a config
    without them) is refused by its fingerprint, with the message a changed config gets."""
    manifest, splits = tiny
    cfg = _cfg(manifest, epochs=1)
    train_model(cfg, splits, checkpoint_dir=tmp_path, evaluate_test=False)
    state = load_checkpoint(tmp_path / "last.pt")
    old_train = {
        k: v
        for k, v in dataclasses.asdict(cfg.train).items()
        if k not in ("grad_accum_steps", "lr_schedule", "warmup_epochs", "sync_every_step")
    }
    old = {**cfg.to_dict(), "train": old_train}
    del state["scheduler"]
    state["fingerprint"] = hashlib.sha256(
        json.dumps(old, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    assert state["version"] == CHECKPOINT_VERSION == 2
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="checkpoint belongs to another config"):
        train_model(_cfg(manifest, epochs=2), splits, checkpoint_dir=tmp_path, evaluate_test=False)
