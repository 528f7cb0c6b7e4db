"""The engine: learning, model selection, exact resume, safe checkpoints, one evaluation, clear
errors."""

import pickle
import random

import numpy as np
import pytest
import torch

from msaflow.feature_store import DataError, load_dataset
from msaflow.tasks.config import ConfigError, resolve_run_config
from msaflow.tasks.data import split_to_tensors, standardize_splits
from msaflow.tasks.metrics import sentiment_metrics
from msaflow.tasks.train import (
    _rng_state,
    _set_rng_state,
    build_model,
    clear_checkpoints,
    evaluate,
    load_best_model,
    load_checkpoint,
    predict,
    seed_everything,
    train_model,
)


@pytest.fixture(scope="module")
def tiny(tiny_sim):
    manifest, splits = load_dataset(tiny_sim)
    return manifest, splits


def _cfg(manifest, variant="full", **train):
    return resolve_run_config(
        "mmafnet",
        variant,
        "quick",
        train_overrides={"epochs": 4, "batch_size": 16, **train},
        input_spec=manifest.input_spec(),
    )


def test_short_run_lowers_valid_mae(tiny):
    manifest, splits = tiny
    cfg = _cfg(manifest)
    seed_everything(cfg.train.seed)
    untrained = build_model(cfg)
    pred, target, _ = predict(
        untrained, split_to_tensors(splits["valid"]), 256, torch.device("cpu")
    )
    before = sentiment_metrics(pred, target)["mae"]
    result = train_model(cfg, splits)
    assert result.best_valid["valid/mae"] < before
    assert len(result.history) == 4 and 0 <= result.best_epoch < 4
    assert result.best_valid["valid/mae"] == min(r["valid/mae"] for r in result.history)
    assert {"test/mae", "test/acc7", "test/acc2_non0", "test/f1_has0", "test/corr"} <= set(
        result.test
    )
    assert result.step_traces and "sgm/omega_t" in result.step_traces[0]
    assert any("ipr/phi_t" in r for r in result.epoch_traces)


def test_resume_equals_uninterrupted(tiny, tmp_path, train_killed_then_resumed):
    manifest, splits = tiny
    cfg = _cfg(manifest)
    full = train_model(cfg, splits, checkpoint_dir=tmp_path / "a")
    resumed = train_killed_then_resumed(cfg, splits, tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["valid/mae"] == b["valid/mae"] and a["train/loss/total"] == b["train/loss/total"]
    assert full.test == resumed.test
    assert full.step_traces == resumed.step_traces and full.epoch_traces == resumed.epoch_traces
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_of_another_config_is_refused(tiny, tmp_path):
    manifest, splits = tiny
    train_model(_cfg(manifest, epochs=1), splits, checkpoint_dir=tmp_path, evaluate_test=False)
    with pytest.raises(ConfigError, match="another config"):
        train_model(
            _cfg(manifest, epochs=1, lr=0.5), splits, checkpoint_dir=tmp_path, evaluate_test=False
        )


def test_missing_split_is_a_clear_error(tiny):
    manifest, splits = tiny
    with pytest.raises(ConfigError, match="'test'"):
        train_model(_cfg(manifest, epochs=1), {"train": splits["train"], "valid": splits["valid"]})


def test_nan_loss_is_reported(tiny):
    manifest, splits = tiny
    # a divergent step size: the weights overflow after the first updates and the loss follows
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf)"):
        train_model(
            _cfg(manifest, epochs=2, optimizer="sgd", lr=1e36, momentum=0.0),
            splits,
            evaluate_test=False,
        )


def test_seeds_differ_and_repeat(tiny):
    manifest, splits = tiny
    a = train_model(_cfg(manifest, "none", epochs=1, seed=1), splits, evaluate_test=False)
    b = train_model(_cfg(manifest, "none", epochs=1, seed=1), splits, evaluate_test=False)
    c = train_model(_cfg(manifest, "none", epochs=1, seed=2), splits, evaluate_test=False)
    assert a.history[0]["valid/mae"] == b.history[0]["valid/mae"]
    assert not np.isclose(a.history[0]["valid/mae"], c.history[0]["valid/mae"], rtol=0, atol=1e-9)


# --- checkpoints run no code (issue 13.4) ---------------------------------------------------------


class _Payload:
    """Unpickling this calls open(marker, "w"): the marker's existence proves code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker, fmt: str) -> None:
    obj = {"version": 2, "fingerprint": "x", "model": _Payload(marker)}
    if fmt == "torch":
        torch.save(obj, path)
    else:  # a bare pickle, as torch.load also accepts
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)


def test_payload_is_live_under_unsafe_loading(tmp_path):
    """The planted file really runs code when unpickled unsafely (what train.py used to do)."""
    marker = tmp_path / "pwned"
    _plant(tmp_path / "last.pt", marker, "torch")
    torch.load(tmp_path / "last.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_planted_last_pt_is_refused_and_runs_nothing(tiny, tmp_path, fmt):
    manifest, splits = tiny
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    ckpt.mkdir()
    _plant(ckpt / "last.pt", marker, fmt)
    with pytest.raises(DataError) as info:
        train_model(_cfg(manifest, epochs=1), splits, checkpoint_dir=ckpt, evaluate_test=False)
    assert not marker.exists()
    message = str(info.value)
    assert str(ckpt / "last.pt") in message and "checkpoint" in message and "\n" not in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_planted_best_pt_is_refused_and_runs_nothing(tiny, tmp_path, fmt):
    manifest, _ = tiny
    marker = tmp_path / "pwned"
    _plant(tmp_path / "best.pt", marker, fmt)
    with pytest.raises(DataError, match="best.pt: checkpoint"):
        load_best_model(tmp_path, _cfg(manifest, epochs=1))
    assert not marker.exists()


def test_truncated_checkpoint_is_a_data_error(tiny, tmp_path):
    manifest, splits = tiny
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="last.pt: checkpoint"):
        train_model(_cfg(manifest, epochs=1), splits, checkpoint_dir=tmp_path, evaluate_test=False)


# --- RNG state: plain data, restored from CPU tensors (issues 13.4, 14.3) -------------------------


def test_checkpoints_load_weights_only_and_rng_state_is_cpu_bytes(tiny, tmp_path):
    manifest, splits = tiny
    train_model(_cfg(manifest, epochs=1), splits, checkpoint_dir=tmp_path, evaluate_test=False)
    for name in ("last.pt", "best.pt"):
        torch.load(
            tmp_path / name, weights_only=True
        )  # no safe globals needed: tensors and plain data
    rng = load_checkpoint(tmp_path / "last.pt")["rng"]
    # set_rng_state needs a CPU ByteTensor (a CUDA one raised TypeError on resume)
    assert rng["torch"].device.type == "cpu" and rng["torch"].dtype == torch.uint8
    assert all(s.device.type == "cpu" for s in rng.get("cuda", []))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    seed_everything(7)
    torch.save({"rng": _rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    seed_everything(8)
    _set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert (
        torch.equal(expected[0], got[0])
        and np.array_equal(expected[1], got[1])
        and expected[2] == got[2]
    )


# --- IPR resets after validation and checkpoint (issue 14.4) --------------------------------------


def test_validated_and_checkpointed_model_is_the_trained_one_before_the_ipr_reset(tiny, tmp_path):
    manifest, splits = tiny
    cfg = _cfg(manifest, epochs=1)  # quick: epoch 0 is in the modulation window
    result = train_model(cfg, splits, checkpoint_dir=tmp_path, evaluate_test=False)
    assert result.epoch_traces[0]["ipr/phi_t"] > 0.1  # a reset was decided at epoch 0
    valid_t = split_to_tensors(standardize_splits(splits)[0]["valid"])  # the engine's inputs

    def score(model):
        return evaluate(
            model,
            valid_t,
            split="valid",
            data_kind="sentiment",
            class_names=None,
            head="regression",
            batch_size=256,
            device=torch.device("cpu"),
        )[0]

    model = load_best_model(tmp_path, cfg)
    assert float(model.ipr_pending.min()) > 0  # the checkpoint holds the reset still to apply
    assert {k: result.history[0][k] for k in score(model)} == score(
        model
    )  # validated = checkpointed
    attn = [p.detach().clone() for p in model.attn.parameters()]
    model.before_epoch(1)  # what the next epoch would start from
    assert not all(torch.equal(a, p) for a, p in zip(attn, model.attn.parameters(), strict=True))
    assert score(model)["valid/mae"] != result.history[0]["valid/mae"]


# --- one evaluation, fp32 (issue 14.7) ------------------------------------------------------------


def test_valid_metrics_during_training_equal_evaluate_on_the_best_checkpoint(tiny, tmp_path):
    manifest, splits = tiny
    cfg = _cfg(manifest, epochs=2)
    result = train_model(cfg, splits, checkpoint_dir=tmp_path, evaluate_test=True)
    model = load_best_model(tmp_path, cfg)
    kw = dict(
        data_kind="sentiment",
        class_names=None,
        head="regression",
        batch_size=cfg.train.eval_batch_size,
        device=torch.device("cpu"),
    )
    splits = standardize_splits(splits)[0]  # the model was trained on train-standardised features
    valid, _, _ = evaluate(model, split_to_tensors(splits["valid"]), split="valid", **kw)
    assert valid == result.best_valid
    test, _, _ = evaluate(model, split_to_tensors(splits["test"]), split="test", **kw)
    assert test == result.test
    # a caller's bf16 autocast does not reach the predictions: evaluation is fp32 everywhere
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16_region, _, _ = evaluate(
            model, split_to_tensors(splits["valid"]), split="valid", **kw
        )
    assert in_bf16_region == valid


# --- feature standardisation inside the engine (issue 15.1) ---------------------------------------


def test_engine_standardises_with_train_statistics_and_the_switch_turns_it_off(tiny):
    manifest, splits = tiny
    on = train_model(_cfg(manifest, epochs=1), splits, evaluate_test=False)
    assert on.standardization is not None and on.standardization["fit_on"] == "train"
    x = splits["train"].features["audio"]
    valid = np.arange(x.shape[1])[None, :] < splits["train"].lengths["audio"][:, None]
    expected = x[valid].mean(0)  # over the train split's valid frames only
    assert np.allclose(on.standardization["modalities"]["audio"]["mean"], expected, atol=1e-4)
    off = train_model(_cfg(manifest, epochs=1, standardize=False), splits, evaluate_test=False)
    assert off.standardization is None
    assert on.best_valid != off.best_valid


def test_clear_checkpoints_removes_only_what_msaflow_wrote(tiny, tmp_path):
    manifest, splits = tiny
    train_model(
        _cfg(manifest, epochs=1), splits, checkpoint_dir=tmp_path / "ck", evaluate_test=False
    )
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    (tmp_path / "ck" / ".last.pt.tmp-1").write_bytes(b"x")  # a killed save's temporary
    clear_checkpoints(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["notes.txt"]
    (tmp_path / "ck" / "notes.txt").unlink()
    train_model(
        _cfg(manifest, epochs=1), splits, checkpoint_dir=tmp_path / "ck", evaluate_test=False
    )
    clear_checkpoints(tmp_path / "ck")
    assert not (tmp_path / "ck").exists()  # nothing else there: the folder goes too


def test_trainable_parameter_count_matches_a_built_model_and_skips_frozen_ones():
    """``model.num_params`` (logged for every run) counts what the optimiser may train, built on
    the meta device; it equals the count of a model built for real."""
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import build_model, count_trainable_params

    for model, variant in (("mmafnet", "full"), ("mmcl", "full"), ("unimodal", "text")):
        cfg = resolve_run_config(model, variant, "quick")
        built = build_model(cfg)
        assert count_trainable_params(cfg) == sum(p.numel() for p in built.parameters()) > 0


def test_early_stopping_ends_after_patience_epochs_and_resumes_to_the_same_stop(
    tiny, tmp_path, train_killed_then_resumed
):
    """``patience`` N: training ends once the selection metric has not improved for N epochs.
    Selecting the *largest* valid MAE makes epoch 0 the best of a learning run, so a run of 10
    epochs with patience 2 stops after epoch 2; interrupted after epoch 1, it resumes and stops
    at the same place."""
    manifest, splits = tiny
    cfg = _cfg(
        manifest, "none", epochs=10, patience=2, select_metric="valid/mae", select_mode="max"
    )
    full = train_model(cfg, splits, checkpoint_dir=tmp_path / "a", evaluate_test=False)
    assert full.best_epoch == 0 and [r["epoch"] for r in full.history] == [0, 1, 2]
    resumed = train_killed_then_resumed(cfg, splits, tmp_path / "b", evaluate_test=False)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    again = train_model(cfg, splits, checkpoint_dir=tmp_path / "b", evaluate_test=False)
    assert len(again.history) == 3, "a finished early stop is not trained further on re-run"
    off = train_model(_cfg(manifest, "none", epochs=3), splits, evaluate_test=False)
    assert len(off.history) == 3


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    from msaflow.tasks.train import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"
