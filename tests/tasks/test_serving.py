"""The logged model is a servable MLflow pyfunc: logged from code (nothing pickled), it takes the
store's raw features as a dict of arrays or a DataFrame, standardises them itself, and predicts in
a fresh process what the trained module predicts here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import msaflow
from msaflow.feature_store import load_dataset
from msaflow.modalities import MODALITIES
from msaflow.models import registry
from msaflow.models.spec import Cell
from msaflow.tasks import serving
from msaflow.tasks import tracking as tr
from msaflow.tasks.config import RunConfig, resolve_run_config
from msaflow.tasks.data import split_to_tensors, standardize_splits, subset
from msaflow.tasks.prepare import prepare_store
from msaflow.tasks.refs import Tracking
from msaflow.tasks.run import evaluate_run, open_parent_run, train_run
from msaflow.tasks.train import build_model, load_best_model, predict

ROOT = Path(msaflow.__file__).resolve().parents[1]


def _raw(split, rows: int | None = None) -> dict[str, np.ndarray]:
    """A split's features as a store holds them (not standardised), keyed as a batch."""
    out = {}
    for m in MODALITIES:
        if m in split.features:
            out[m] = np.ascontiguousarray(split.features[m][:rows], dtype=np.float32)
            out[f"{m}_len"] = np.asarray(split.lengths[m][:rows], dtype=np.int64)
    return out


def _frame(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per utterance: a (T, d) array per modality cell, the length beside it."""
    n = len(next(iter(arrays.values())))
    return pd.DataFrame(
        {k: [v[i] for i in range(n)] if v.ndim > 1 else v for k, v in arrays.items()}
    )


@pytest.fixture(scope="module")
def sim_splits(tiny_sim):
    _, splits = load_dataset(tiny_sim, splits=("train", "test"))
    standardized, stats = standardize_splits(splits)
    return splits, standardized, stats


def _save(tmp_path: Path, model, cfg: RunConfig, example: dict, stats) -> str:
    path = serving.save_pyfunc(tmp_path / cfg.model, model, cfg, example, stats and stats.to_dict())
    return str(path)


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_model_round_trips_through_its_pyfunc(name, tiny_sim, sim_splits, tmp_path):
    """Weights, config and statistics rebuild the same module; predict standardises raw input."""
    raw_splits, standardized, stats = sim_splits
    ref = prepare_store(str(tiny_sim))
    cfg = resolve_run_config(
        name, None, "quick", input_spec=ref.input_spec, data_kind=ref.data_kind
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    test = split_to_tensors(standardized["test"])
    expected, _, _ = predict(model, test, 256, torch.device("cpu"), cfg.model_cfg.head)
    loaded = mlflow.pyfunc.load_model(_save(tmp_path, model, cfg, test, stats))
    raw = _raw(raw_splits["test"])
    got = loaded.predict(raw)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.predict(_frame(raw)), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(loaded.predict(raw, params={"batch_size": 3}) - expected).max() < 1e-5


def test_a_classifier_returns_logits_and_bad_input_is_refused(tiny_sim, sim_splits, tmp_path):
    raw_splits, standardized, stats = sim_splits
    ref = prepare_store(str(tiny_sim))
    spec = {**ref.input_spec, "head": "classification", "num_classes": 4}
    cfg = resolve_run_config("mmafnet", "full", "quick", input_spec=spec, data_kind="emotion")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    test = split_to_tensors(standardized["test"])
    loaded = mlflow.pyfunc.load_model(_save(tmp_path, model, cfg, test, stats))
    raw = _raw(raw_splits["test"], rows=5)
    with torch.no_grad():
        expected = model(subset(test, np.arange(5))).pred.numpy()
    got = loaded.predict(raw)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # a DataFrame cell may hold the flat list of T * d floats (what JSON serving sends)
    flat = pd.DataFrame(
        {k: [r.ravel().tolist() for r in v] if v.ndim > 1 else v for k, v in raw.items()}
    )
    np.testing.assert_allclose(loaded.predict(flat), expected, rtol=1e-5, atol=1e-5)
    assert loaded.metadata.signature.outputs.inputs[0].shape == (-1, 4)

    with pytest.raises(MlflowException, match="missing inputs"):
        loaded.predict({k: v for k, v in raw.items() if not k.startswith("vision")})
    with pytest.raises(MlflowException, match="[Ss]hape"):
        loaded.predict({**raw, "audio": raw["audio"][:, :7]})
    with pytest.raises(MlflowException, match="dtype"):  # the store's dtypes, as the signature says
        loaded.predict({**raw, "text": raw["text"].astype(np.float64)})


def test_weights_without_safetensors_load_with_weights_only(tmp_path, monkeypatch):
    cfg = resolve_run_config("unimodal", None, "quick")
    model = build_model(cfg)
    monkeypatch.setattr(serving, "_has_safetensors", lambda: False)
    path = serving.save_weights(model, tmp_path)
    assert path.name == serving.WEIGHTS_TORCH
    other = build_model(cfg)
    serving.load_weights(other, path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_a_resolved_config_round_trips_through_json():
    cfg = resolve_run_config("mmafnet", "sgm", "quick", train_overrides={"epochs": 3})
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.fingerprint() == cfg.fingerprint()


_FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd
    import mlflow

    raw = dict(np.load(sys.argv[1], allow_pickle=False))
    n = len(raw["text"])
    frame = pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in raw.items()})
    out = {}
    for i, uri in enumerate(json.loads(sys.argv[2])):
        model = mlflow.pyfunc.load_model(uri)
        out[f"dict{i}"] = model.predict(raw)
        out[f"frame{i}"] = model.predict(frame)
    # what this process imported: the model came from msaflow's code, not from a pickle
    out["modules"] = np.array(sorted(m for m in sys.modules if m.startswith("msaflow.tasks")))
    np.savez(sys.argv[3], **out)
    """
)


def test_the_logged_model_predicts_in_a_fresh_process(tiny_sim, tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.setenv("MSAFLOW_HOME", str(tmp_path / "home"))
    uri = mlflow_uri
    ref = prepare_store(str(tiny_sim))
    tracking = Tracking(uri=uri, experiment_id=tr.ensure_experiment(uri, "serve"), experiment="s")
    cfg = resolve_run_config(
        "mmafnet",
        "full",
        "quick",
        train_overrides={"epochs": 1, "system_metrics": False},
        input_spec=ref.input_spec,
        data_kind=ref.data_kind,
    )
    parent = open_parent_run(tracking, ref, "mmafnet", [Cell("full", "full")], [1], "quick", "t")
    trained = train_run(cfg, "full", ref, tracking, parent)
    row = evaluate_run(trained, cfg, "full", ref, tracking)

    # in this process: the module from its checkpoint on the standardised test split
    _, splits = load_dataset(tiny_sim, splits=("train", "test"))
    standardized, _ = standardize_splits(splits)
    model = load_best_model(trained["checkpoint_dir"], cfg)
    expected, target, _ = predict(
        model, split_to_tensors(standardized["test"]), 256, torch.device("cpu")
    )
    assert float(np.abs(expected - target).mean()) == pytest.approx(row["test/mae"], abs=1e-5)

    client = MlflowClient(uri)
    (logged,) = client.search_logged_models(
        [tracking.experiment_id], filter_string=f"source_run_id = '{row['run_id']}'"
    )
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}"))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "artifacts/model.safetensors" in files, files  # plain tensors
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))], files  # nothing pickled
    mlmodel = mlflow.models.Model.load(str(local))
    assert set(mlmodel.flavors) == {"python_function"}
    assert mlmodel.flavors["python_function"]["model_code_path"].endswith("pyfunc_model.py")

    npz, out = tmp_path / "raw.npz", tmp_path / "out.npz"
    np.savez(npz, **_raw(splits["test"]))
    uris = [f"runs:/{row['run_id']}/model", f"models:/{logged.model_id}"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MLFLOW_TRACKING_URI": uri,
    }
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, str(npz), json.dumps(uris), str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out, allow_pickle=False)
    for key in ("dict0", "frame0", "dict1", "frame1"):
        np.testing.assert_allclose(got[key], expected, rtol=1e-5, atol=1e-5, err_msg=key)
    assert "msaflow.tasks.serving" in set(got["modules"])


def test_a_model_logged_with_the_old_task_key_still_loads(tiny_sim, sim_splits, tmp_path):
    """Models logged before ``model_cfg.task`` became ``head`` name the output kind ``task`` in
    ``config.json`` (``model.task``) and ``inputs.json``: they load and predict the same."""
    raw_splits, standardized, stats = sim_splits
    ref = prepare_store(str(tiny_sim))
    cfg = resolve_run_config(
        "earlyfusion", None, "quick", input_spec=ref.input_spec, data_kind=ref.data_kind
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    test = split_to_tensors(standardized["test"])
    path = Path(_save(tmp_path, model, cfg, test, stats))
    (config,) = path.rglob("config.json")
    old = json.loads(config.read_text())
    old["model_cfg"]["task"] = old["model_cfg"].pop("head")
    config.write_text(json.dumps(old))
    (inputs,) = path.rglob("inputs.json")
    old_inputs = json.loads(inputs.read_text())
    old_inputs["task"] = old_inputs.pop("head")
    inputs.write_text(json.dumps(old_inputs))
    assert RunConfig.from_dict(old) == cfg
    expected, _, _ = predict(model, test, 256, torch.device("cpu"), cfg.model_cfg.head)
    got = mlflow.pyfunc.load_model(str(path)).predict(_raw(raw_splits["test"]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
