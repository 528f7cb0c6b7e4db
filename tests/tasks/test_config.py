import pytest

from tasks.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    flatten,
    load_overrides_file,
    resolve_run_config,
)


def test_resolution_order_and_fingerprint():
    a = resolve_run_config("mmafnet", "sgm", "quick", train_overrides={"lr": 0.01, "seed": 3})
    b = resolve_run_config("mmafnet", "sgm", "quick", train_overrides={"lr": 0.01, "seed": 3})
    c = resolve_run_config("mmafnet", "sgm", "quick", train_overrides={"lr": 0.02, "seed": 3})
    assert a.train.lr == 0.01 and a.train.seed == 3 and a.run_name == "mmafnet/sgm/seed3"
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_unknown_keys_and_bad_types_are_named():
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(TrainConfig(), {"learning_rate": 1.0}, "train")
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        apply_overrides(TrainConfig(), {"epochs": 2.5}, "train")
    with pytest.raises(ConfigError, match="expected true/false"):
        apply_overrides(TrainConfig(), {"deterministic": "yes"}, "train")
    assert apply_overrides(TrainConfig(), {"lr": 1}, "train").lr == 1.0


def test_never_select_on_test():
    with pytest.raises(ConfigError, match="validation metric"):
        resolve_run_config("mmafnet", "full", "quick", train_overrides={"select_metric": "test/mae"})


def test_unknown_variant_and_preset():
    with pytest.raises(ConfigError, match="no variant"):
        resolve_run_config("mmafnet", "nope", "quick")
    with pytest.raises(ConfigError, match="no preset"):
        resolve_run_config("mmafnet", "full", "nope")


def test_overrides_file(tmp_path):
    good = tmp_path / "best.yaml"
    good.write_text("model: {alpha: 0.5}\ntrain: {lr: 0.001}\n")
    assert load_overrides_file(good) == {"model": {"alpha": 0.5}, "train": {"lr": 0.001}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: sgd\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_overrides_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_overrides_file(tmp_path / "missing.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
