"""``train.text_encoder=finetune``: an encoder fine-tuned on the store's raw text, wrapped around an
unchanged model; its own learning rate, its weights in the checkpoints, exact resume, clear errors.

Most tests use a tiny random BERT (2 layers, 32 wide) saved with the offline MiniLM's tokenizer as
a local checkpoint folder (``train.text_encoder_path``); one trains the offline MiniLM itself."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from msaflow.errors import ConfigError, DataError
from msaflow.feature_store import load_dataset, write_dataset
from msaflow.tasks.config import TrainConfig, resolve_run_config
from msaflow.tasks.text_finetune import (
    TextEncoderModel,
    encoder_dir,
    load_split_tensors,
    load_text_encoder,
    split_tensors,
)
from msaflow.tasks.train import (
    build_model,
    build_optimizer,
    evaluate,
    load_best_model,
    load_checkpoint,
    train_model,
)

WORDS = {True: "good great lovely", False: "bad awful boring"}


@pytest.fixture(scope="module")
def text_store(tiny_sim, tmp_path_factory):
    """The tiny simulation with a sentence per utterance (its words follow the label's sign)."""
    _, splits = load_dataset(tiny_sim)
    with_texts = {
        name: dataclasses.replace(
            s,
            texts=np.array(
                [f"the film was {WORDS[bool(y > 0)]} {i}" for i, y in enumerate(s.labels)]
            ),
        )
        for name, s in splits.items()
    }
    out = tmp_path_factory.mktemp("stores") / "sim-mosi-texts"
    write_dataset(out, with_texts, name="sim-mosi-texts", source="sim")
    return out


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A local BERT checkpoint folder: random tiny weights, the offline MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("encoders") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    minilm = encoder_dir(TrainConfig())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, out / name)
    return out


def _cfg(store, model="misa", *, path=None, **train):
    manifest, _ = load_dataset(store)
    overrides = {"epochs": 1, "batch_size": 16, "text_encoder": "finetune", **train}
    if path is not None:
        overrides["text_encoder_path"] = str(path)
    return resolve_run_config(
        model, None, "quick", train_overrides=overrides, input_spec=manifest.input_spec()
    )


def _encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "text_encoder."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def test_the_model_reads_the_encoders_width_and_the_default_is_frozen(text_store, tiny_bert):
    manifest, _ = load_dataset(text_store)
    frozen = resolve_run_config("misa", None, "quick", input_spec=manifest.input_spec())
    assert frozen.train.text_encoder == "frozen"
    assert frozen.model_cfg.text_dim == manifest.input_spec()["text_dim"]
    assert _cfg(text_store).model_cfg.text_dim == 384  # the offline all-MiniLM-L6-v2
    tiny = _cfg(text_store, path=tiny_bert, text_max_tokens=12)
    assert tiny.model_cfg.text_dim == 32 and tiny.model_cfg.seq_len >= 12
    with pytest.raises(ConfigError, match="train.text_encoder_path: expected a local"):
        _cfg(text_store, path=tiny_bert / "missing")
    with pytest.raises(ConfigError, match=r"train\.text_encoder: expected one of"):
        _cfg(text_store, text_encoder="lora")


@pytest.mark.parametrize("model", ["misa", "mmafnet"])
def test_one_epoch_fine_tunes_the_encoder_and_leaves_the_store_alone(
    text_store, tiny_bert, tmp_path, model
):
    cfg = _cfg(text_store, model, path=tiny_bert)
    _, splits = load_dataset(text_store)
    text_before = splits["train"].features["text"].copy()
    result = train_model(cfg, splits, checkpoint_dir=tmp_path)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["valid/mae"])
    assert {"test/mae", "test/corr"} <= set(result.test)
    # the store's text features are not read, so they are not standardised either
    assert set(result.standardization["modalities"]) == {"audio", "vision"}
    np.testing.assert_array_equal(splits["train"].features["text"], text_before)
    trained = _encoder_state(load_checkpoint(tmp_path / "last.pt")["model"])
    pretrained = load_text_encoder(cfg.train).state_dict()
    assert trained.keys() == pretrained.keys()
    changed = [k for k in trained if not torch.equal(trained[k], pretrained[k])]
    assert "encoder.layer.0.attention.self.query.weight" in changed
    assert len(changed) > len(trained) // 2


def test_the_offline_minilm_fine_tunes(text_store, monkeypatch):
    import msaflow.tasks.train as engine

    built = []
    monkeypatch.setattr(
        engine, "build_model", lambda cfg: built.append(build_model(cfg)) or built[-1]
    )
    cfg = _cfg(text_store, "self_mm", text_max_tokens=16)
    _, splits = load_dataset(text_store)
    small = {n: s.take(np.arange(min(len(s), 16))) for n, s in splits.items()}
    result = train_model(cfg, small, evaluate_test=False)
    assert np.isfinite(result.history[0]["valid/mae"])
    (model,) = built
    assert isinstance(model, TextEncoderModel) and model.model.cfg.text_dim == 384
    w = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(
        model.text_encoder.state_dict()[w], load_text_encoder(cfg.train).state_dict()[w]
    )


def test_frozen_mode_is_the_plain_model_on_the_stores_features(text_store, tiny_sim):
    manifest, splits = load_dataset(text_store)
    cfg = resolve_run_config(
        "misa", None, "quick", train_overrides={"epochs": 1}, input_spec=manifest.input_spec()
    )
    model = build_model(cfg)
    assert not isinstance(model, TextEncoderModel)
    assert len(build_optimizer(model, cfg).param_groups) == 1
    assert "text_ids" not in split_tensors(splits["train"], cfg)
    with_texts = train_model(cfg, splits)
    _, plain = load_dataset(tiny_sim)  # the same rows without texts: the same numbers
    without = train_model(cfg, plain)
    assert with_texts.history[0]["valid/mae"] == without.history[0]["valid/mae"]
    assert with_texts.test == without.test
    assert "text" in with_texts.standardization["modalities"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_encoder_is_its_own_parameter_group_at_its_own_rate(text_store, tiny_bert, optimizer):
    cfg = _cfg(
        text_store,
        "mmafnet",  # whose SGM probes have their own optimiser: left out of both groups
        path=tiny_bert,
        optimizer=optimizer,
        lr=1e-3,
        weight_decay=1e-4,
        text_encoder_lr=2e-5,
        text_encoder_weight_decay=1e-2,
    )
    model = build_model(cfg)
    own = model.own_optimizer()
    own_params = [p for g in own.param_groups for p in g["params"]] if own else []
    main, enc = build_optimizer(model, cfg, exclude=own_params).param_groups
    assert (main["lr"], main["weight_decay"]) == (1e-3, 1e-4)
    assert (enc["lr"], enc["weight_decay"]) == (2e-5, 1e-2)
    assert {id(p) for p in enc["params"]} == {id(p) for p in model.text_encoder.parameters()}
    every = {id(p) for p in model.parameters()}
    assert {id(p) for p in (*main["params"], *enc["params"], *own_params)} == every
    assert len(main["params"]) + len(enc["params"]) + len(own_params) == len(every)


def test_resume_from_last_equals_uninterrupted_and_best_evaluates_the_tuned_encoder(
    text_store, tiny_bert, tmp_path, train_killed_then_resumed
):
    cfg = _cfg(text_store, "misa", path=tiny_bert, epochs=3, text_max_tokens=12)
    _, splits = load_dataset(text_store)
    full = train_model(cfg, splits, checkpoint_dir=tmp_path / "a")
    resumed = train_killed_then_resumed(cfg, splits, tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["valid/mae"] == b["valid/mae"] and a["train/loss/total"] == b["train/loss/total"]
    assert full.test == resumed.test
    sa = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    sb = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert _encoder_state(sa) and sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # the pipeline's evaluation (tasks.run.evaluate_run): best.pt rebuilt, the test split tokenised
    best = load_checkpoint(tmp_path / "a" / "best.pt")["model"]
    model = load_best_model(tmp_path / "a", cfg)
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    metrics, _, _ = evaluate(
        model,
        load_split_tensors(text_store, "test", cfg)[0],
        split="test",
        data_kind="sentiment",
        class_names=None,
        head="regression",
        batch_size=cfg.train.eval_batch_size,
        device=torch.device("cpu"),
    )
    assert metrics == full.test


def test_a_store_without_texts_is_a_clear_error(tiny_sim, tiny_bert):
    cfg = _cfg(tiny_sim, "misa", path=tiny_bert)
    with pytest.raises(DataError) as exc:
        load_split_tensors(tiny_sim, "test", cfg)
    assert str(exc.value).startswith(f"{tiny_sim}: text: expected per-utterance raw text")
    assert "\n" not in str(exc.value)
    _, splits = load_dataset(tiny_sim)
    with pytest.raises(DataError, match=r"^split 'train': text: expected per-utterance raw text"):
        train_model(cfg, splits)


def test_the_pipeline_tasks_train_evaluate_and_log_the_wrapped_model(
    text_store, tiny_bert, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from msaflow.models.spec import Cell
    from msaflow.tasks import tracking as tr
    from msaflow.tasks.prepare import prepare_store
    from msaflow.tasks.refs import Tracking
    from msaflow.tasks.run import evaluate_run, open_parent_run, train_run

    monkeypatch.setenv("MSAFLOW_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ref = prepare_store(str(text_store))
    tracking = Tracking(uri=uri, experiment_id=tr.ensure_experiment(uri, "ft"), experiment="ft")
    cfg = _cfg(text_store, "misa", path=tiny_bert, text_max_tokens=12)
    parent = open_parent_run(tracking, ref, "misa", [Cell("full", "full")], [1], "quick", "t")
    row = evaluate_run(train_run(cfg, "full", ref, tracking, parent), cfg, "full", ref, tracking)
    assert np.isfinite(row["test/mae"])
    run = MlflowClient(uri).get_run(row["run_id"])
    assert run.data.params["train.text_encoder"] == "finetune"
    assert int(run.data.params["model.num_params"]) > sum(
        p.numel() for p in load_text_encoder(cfg.train).parameters()
    )
    assert run.data.metrics["test/mae"] == row["test/mae"]


def test_a_fine_tuned_model_is_served_from_tokens_and_raw_features(text_store, tiny_bert, tmp_path):
    """Its pyfunc takes the encoder's ``text_ids``/``text_mask`` beside the raw audio and vision
    (which it standardises itself), and predicts what the trained module predicts."""
    import mlflow
    import pandas as pd

    from msaflow.tasks import serving
    from msaflow.tasks.train import predict

    cfg = _cfg(text_store, "misa", path=tiny_bert, text_max_tokens=12)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    test, stats = load_split_tensors(text_store, "test", cfg)
    expected, _, _ = predict(model, test, 256, torch.device("cpu"), cfg.model_cfg.head)
    path = serving.save_pyfunc(tmp_path / "ft", model, cfg, test, stats and stats.to_dict())
    loaded = mlflow.pyfunc.load_model(str(path))
    _, raw = load_dataset(text_store, splits=("test",))
    split = raw["test"]
    inputs = {}
    for m in ("audio", "vision"):
        inputs[m] = np.ascontiguousarray(split.features[m], dtype=np.float32)
        inputs[f"{m}_len"] = np.asarray(split.lengths[m], dtype=np.int64)
    assert "text" not in serving.model_inputs(test, cfg, None)["modalities"]
    inputs["text_ids"], inputs["text_mask"] = (t.numpy() for t in _tokens(split, cfg))
    got = loaded.predict(inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    frame = pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in inputs.items()})
    np.testing.assert_allclose(loaded.predict(frame), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="text_ids"):
        loaded.predict({k: v for k, v in inputs.items() if k != "text_ids"})


def _tokens(split, cfg):
    from msaflow.tasks.text_finetune import tokenize

    return tokenize(split.texts, cfg.train)
