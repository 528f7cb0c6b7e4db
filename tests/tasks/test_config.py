import pytest

from msaflow.tasks.config import (
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
        resolve_run_config(
            "mmafnet", "full", "quick", train_overrides={"select_metric": "test/mae"}
        )


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


# --- the selection metric defaults per task (issue 14.1) ------------------------------------------
EMOTION_SPEC = {"head": "classification", "num_classes": 4}
IEMOCAP = ["neutral", "happy", "sad", "angry"]


@pytest.mark.parametrize("model", ["mmafnet", "mmcl", "unimodal"])
def test_select_metric_defaults_per_task(model):
    """An emotion run once failed at epoch 1: the default 'valid/mae' is not an emotion metric."""
    emotion = resolve_run_config(model, input_spec=EMOTION_SPEC)
    assert (emotion.train.select_metric, emotion.train.select_mode) == ("valid/f1_weighted", "max")
    exact = resolve_run_config(
        model, input_spec=EMOTION_SPEC, data_kind="emotion", class_names=IEMOCAP
    )
    assert exact.train == emotion.train
    for data_kind in ("sentiment", "depression"):
        cfg = resolve_run_config(model, input_spec={"head": "regression"}, data_kind=data_kind)
        assert (cfg.train.select_metric, cfg.train.select_mode) == ("valid/mae", "min")
    # no data at all: the model config's default kind (regression), so sentiment's default
    assert resolve_run_config(model).train.select_metric == "valid/mae"


def test_resolved_config_logs_the_concrete_selection():
    cfg = resolve_run_config("mmcl", input_spec=EMOTION_SPEC)
    params = flatten(cfg.to_dict())
    assert (
        params["train.select_metric"] == "valid/f1_weighted"
        and params["train.select_mode"] == "max"
    )
    assert "auto" not in (params["train.select_metric"], params["train.select_mode"])


def test_explicit_select_metric_wins_and_its_direction_follows_the_name():
    cfg = resolve_run_config(
        "mmcl", input_spec=EMOTION_SPEC, train_overrides={"select_metric": "valid/acc"}
    )
    assert (cfg.train.select_metric, cfg.train.select_mode) == ("valid/acc", "max")
    cfg = resolve_run_config(
        "mmcl", input_spec=EMOTION_SPEC, train_overrides={"select_metric": "valid/loss"}
    )
    assert cfg.train.select_mode == "min"
    cfg = resolve_run_config(
        "mmafnet", train_overrides={"select_metric": "valid/corr", "select_mode": "max"}
    )
    assert (cfg.train.select_metric, cfg.train.select_mode) == ("valid/corr", "max")
    cfg = resolve_run_config(
        "mmafnet",
        data_kind="emotion",
        class_names=IEMOCAP,
        input_spec=EMOTION_SPEC,
        train_overrides={"select_metric": "valid/f1_sad"},
    )
    assert cfg.train.select_metric == "valid/f1_sad" and cfg.train.select_mode == "max"


def test_explicit_select_metric_the_task_does_not_compute_is_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"train.select_metric: 'valid/mae' is not computed for task emotion"
    ):
        resolve_run_config(
            "mmcl", input_spec=EMOTION_SPEC, train_overrides={"select_metric": "valid/mae"}
        )
    with pytest.raises(ConfigError, match=r"'valid/f1_bored' is not computed .*valid/f1_sad"):
        resolve_run_config(
            "mmcl",
            input_spec=EMOTION_SPEC,
            data_kind="emotion",
            class_names=IEMOCAP,
            train_overrides={"select_metric": "valid/f1_bored"},
        )
    with pytest.raises(ConfigError, match=r"'valid/acc7' is not computed for task depression"):
        resolve_run_config(
            "mmafnet",
            input_spec={"head": "regression"},
            data_kind="depression",
            train_overrides={"select_metric": "valid/acc7"},
        )
    with pytest.raises(
        ConfigError, match=r"'valid/f1_weighted' is not computed for task sentiment/depression"
    ):
        resolve_run_config(
            "mmafnet",
            input_spec={"head": "regression"},
            train_overrides={"select_metric": "valid/f1_weighted"},
        )
    with pytest.raises(ConfigError, match="dataset task: expected one of"):
        resolve_run_config("mmafnet", data_kind="translation")


# --- hyper-parameter ranges (issue 14.9) ----------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "part", "key", "value", "expected"),
    [
        ("mmafnet", "model", "alpha", -1, ">= 0"),
        ("mmafnet", "model", "delta", 1.5, r"in \[0, 1\]"),
        ("mmafnet", "model", "delta", -0.1, r"in \[0, 1\]"),
        ("mmafnet", "model", "lambda1", -0.1, ">= 0"),
        ("mmafnet", "model", "lambda2", -1e-3, ">= 0"),
        ("mmafnet", "model", "dropout", 1.0, r"in \[0, 1\)"),
        ("mmcl", "model", "lambda_cl", -0.5, ">= 0"),
        ("mmcl", "model", "temperature", 0.0, "> 0"),
        ("mmafnet", "train", "lr", 0.0, "> 0"),
        ("mmafnet", "train", "lr", -1e-3, "> 0"),
        ("mmafnet", "train", "lr", float("inf"), "> 0"),
        ("mmafnet", "train", "lr", float("nan"), "> 0"),
        ("mmafnet", "train", "epochs", 0, ">= 1"),
        ("mmafnet", "train", "batch_size", 0, ">= 1"),
        ("mmafnet", "train", "weight_decay", -1.0, ">= 0"),
        ("mmafnet", "train", "grad_accum_steps", 0, ">= 1"),
        ("mmafnet", "train", "warmup_epochs", -0.5, ">= 0"),
        ("unimodal", "model", "hidden", 0, ">= 1"),
    ],
)
def test_out_of_range_hyper_parameters_are_refused(model, part, key, value, expected):
    """``alpha: -1`` was accepted; now the field, the expected range and the value are named."""
    kwargs = (
        {"model_overrides": {key: value}} if part == "model" else {"train_overrides": {key: value}}
    )
    with pytest.raises(ConfigError, match=rf"^{part}\.{key}: expected .*{expected}.*, got"):
        resolve_run_config(model, **kwargs)


def test_ranges_accept_the_edges():
    cfg = resolve_run_config(
        "mmafnet",
        model_overrides={"alpha": 0, "delta": 1, "lambda1": 0, "lambda2": 0},
        train_overrides={"epochs": 1, "batch_size": 1, "lr": 1e-9},
    )
    assert cfg.model_cfg.alpha == 0.0 and cfg.model_cfg.delta == 1.0 and cfg.train.epochs == 1


def test_range_error_names_the_params_file(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("model: {alpha: -1}\n")
    with pytest.raises(
        ConfigError, match=r"best.yaml: model.alpha: expected a finite number >= 0, got -1"
    ):
        load_overrides_file(path)
    path.write_text("train: {lr: .nan}\n")
    with pytest.raises(ConfigError, match=r"best.yaml: train.lr: expected .*> 0, got nan"):
        load_overrides_file(path)
    path.write_text("model: [1, 2]\n")
    with pytest.raises(ConfigError, match="best.yaml: model: expected a mapping"):
        load_overrides_file(path)


def test_choices_are_checked():
    with pytest.raises(
        ConfigError, match=r"train.select_mode: expected one of \['auto', 'min', 'max'\]"
    ):
        resolve_run_config("mmafnet", train_overrides={"select_mode": "up"})
    with pytest.raises(ConfigError, match=r"train.optimizer: expected one of"):
        resolve_run_config("mmafnet", train_overrides={"optimizer": "lion"})
    with pytest.raises(
        ConfigError, match=r"train.lr_schedule: expected one of \['constant', 'linear', 'cosine'\]"
    ):
        resolve_run_config("mmafnet", train_overrides={"lr_schedule": "step"})


def test_accumulation_and_schedule_fields():
    """Issue 18: defaults are the loop before them; warmup cannot outlast the run; a YAML int is
    accepted for the fractional warmup, a fraction is not accepted for the step count."""
    t = TrainConfig()
    assert (t.grad_accum_steps, t.lr_schedule, t.warmup_epochs, t.sync_every_step) == (
        1,
        "constant",
        0.0,
        False,
    )
    cfg = resolve_run_config(
        "mmafnet",
        train_overrides={
            "epochs": 4,
            "grad_accum_steps": 2,
            "lr_schedule": "cosine",
            "warmup_epochs": 1,
        },
    )
    assert cfg.train.warmup_epochs == 1.0 and isinstance(cfg.train.warmup_epochs, float)
    assert flatten(cfg.to_dict())["train.grad_accum_steps"] == 2
    resolve_run_config("mmafnet", train_overrides={"epochs": 4, "warmup_epochs": 4})  # the edge
    with pytest.raises(
        ConfigError, match=r"train.warmup_epochs: expected at most train.epochs=4, got 4.5"
    ):
        resolve_run_config("mmafnet", train_overrides={"epochs": 4, "warmup_epochs": 4.5})
    with pytest.raises(ConfigError, match=r"train.grad_accum_steps: expected an integer"):
        resolve_run_config("mmafnet", train_overrides={"grad_accum_steps": 1.5})


def test_every_shipped_preset_and_variant_is_in_range():
    from msaflow.models import registry

    for name, spec in registry().items():
        for preset in spec.presets:
            for variant in spec.variants:
                resolve_run_config(name, variant, preset)
                resolve_run_config(name, variant, preset, input_spec=EMOTION_SPEC)


def test_the_output_kind_head_still_reads_its_old_name_task(tmp_path):
    """``model_cfg.head`` was ``task``: experiment files, input specs and resolved configs that
    name it ``task`` resolve to the same config; the resolved config names it ``head``."""
    new = resolve_run_config(
        "mmafnet", model_overrides={"head": "classification", "num_classes": 3}
    )
    old = resolve_run_config(
        "mmafnet", model_overrides={"task": "classification", "num_classes": 3}
    )
    assert old == new and new.model_cfg.head == "classification"
    spec = {"head": "classification", "num_classes": 3}
    old_spec = {"task": "classification", "num_classes": 3}
    assert resolve_run_config("mmafnet", input_spec=old_spec) == resolve_run_config(
        "mmafnet", input_spec=spec
    )
    assert "model.head" in flatten({"model": new.to_dict()["model_cfg"]})
    assert "task" not in new.to_dict()["model_cfg"]
    with pytest.raises(ConfigError, match="'task' is the old name of 'head'"):
        resolve_run_config(
            "mmafnet", model_overrides={"task": "classification", "head": "regression"}
        )
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  task: classification\n  num_classes: 3\n")
    overrides = load_overrides_file(path)
    assert resolve_run_config("mmafnet", model_overrides=overrides["model"]) == new
