"""The engine: learning, model selection, exact resume, clear errors."""

import numpy as np
import pytest
import torch

from feature_store import load_dataset
from tasks.config import ConfigError, resolve_run_config
from tasks.data import split_to_tensors
from tasks.metrics import sentiment_metrics
from tasks.train import build_model, predict, seed_everything, train_model


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(tiny_sim):
    manifest, splits = load_dataset(tiny_sim)
    return manifest, splits


def _cfg(manifest, variant="full", **train):
    return resolve_run_config("mmafnet", variant, "quick", train_overrides={"epochs": 4, "batch_size": 16, **train},
                              input_spec=manifest.input_spec())


def test_short_run_lowers_valid_mae(tiny):
    manifest, splits = tiny
    cfg = _cfg(manifest)
    seed_everything(cfg.train.seed)
    untrained = build_model(cfg)
    pred, target, _ = predict(untrained, split_to_tensors(splits["valid"]), 256, torch.device("cpu"))
    before = sentiment_metrics(pred, target)["mae"]
    result = train_model(cfg, splits)
    assert result.best_valid["valid/mae"] < before
    assert len(result.history) == 4 and 0 <= result.best_epoch < 4
    assert result.best_valid["valid/mae"] == min(r["valid/mae"] for r in result.history)
    assert {"test/mae", "test/acc7", "test/acc2_non0", "test/f1_has0", "test/corr"} <= set(result.test)
    assert result.step_traces and "sgm/omega_t" in result.step_traces[0]
    assert any("ipr/phi_t" in r for r in result.epoch_traces)


def test_resume_equals_uninterrupted(tiny, tmp_path):
    manifest, splits = tiny
    cfg = _cfg(manifest)
    full = train_model(cfg, splits, checkpoint_dir=tmp_path / "a")

    def stop_after_second(epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_model(cfg, splits, checkpoint_dir=tmp_path / "b", callbacks=[stop_after_second])
    resumed = train_model(cfg, splits, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["valid/mae"] == b["valid/mae"] and a["train/loss/total"] == b["train/loss/total"]
    assert full.test == resumed.test
    assert full.step_traces == resumed.step_traces and full.epoch_traces == resumed.epoch_traces
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_of_another_config_is_refused(tiny, tmp_path):
    manifest, splits = tiny
    train_model(_cfg(manifest, epochs=1), splits, checkpoint_dir=tmp_path, evaluate_test=False)
    with pytest.raises(ConfigError, match="another config"):
        train_model(_cfg(manifest, epochs=1, lr=0.5), splits, checkpoint_dir=tmp_path, evaluate_test=False)


def test_missing_split_is_a_clear_error(tiny):
    manifest, splits = tiny
    with pytest.raises(ConfigError, match="'test'"):
        train_model(_cfg(manifest, epochs=1), {"train": splits["train"], "valid": splits["valid"]})


def test_nan_loss_is_reported(tiny):
    manifest, splits = tiny
    # a divergent step size: the weights overflow after the first updates and the loss follows
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf)"):
        train_model(_cfg(manifest, epochs=2, optimizer="sgd", lr=1e36, momentum=0.0), splits,
                    evaluate_test=False)


def test_seeds_differ_and_repeat(tiny):
    manifest, splits = tiny
    a = train_model(_cfg(manifest, "none", epochs=1, seed=1), splits, evaluate_test=False)
    b = train_model(_cfg(manifest, "none", epochs=1, seed=1), splits, evaluate_test=False)
    c = train_model(_cfg(manifest, "none", epochs=1, seed=2), splits, evaluate_test=False)
    assert a.history[0]["valid/mae"] == b.history[0]["valid/mae"]
    assert not np.isclose(a.history[0]["valid/mae"], c.history[0]["valid/mae"], rtol=0, atol=1e-9)
