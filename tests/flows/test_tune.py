"""The tune flow and ``msaflow tune`` end to end: real Prefect (harness), Optuna (SQLite), MLflow
(SQLite)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from msaflow.cli import app
from msaflow.flows.tune import tune
from msaflow.tasks.config import load_overrides_file

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


def test_tune_flow_end_to_end(tiny_sim, tmp_path, mlflow_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kwargs = dict(
        data=str(tiny_sim),
        epochs=2,
        n_trials=3,
        storage=storage,
        study="flow",
        sampler="random",
        tracking_uri=mlflow_uri,
        experiment="tune-flow",
        eval_seeds=[1, 2],
        out=str(tmp_path / "best.yaml"),
        train_overrides={"batch_size": 16},
    )
    result = tune(**kwargs)
    assert result["finished"] == 3 and result["best_path"] == str(tmp_path / "best.yaml")
    best = load_overrides_file(result["best_path"])
    assert set(best["model"]) == {"alpha", "delta", "lambda1", "lambda2"}

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.run_name == "tune/flow" and parent.data.tags["msaflow.kind"] == "tune"
    assert parent.info.status == "FINISHED" and "best.alpha" in parent.data.params
    assert "best_test_mae_mean" in parent.data.metrics
    children = client.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'",
    )
    names = sorted(r.info.run_name for r in children)
    assert names == ["mmafnet/best/seed1", "mmafnet/best/seed2", "trial-0", "trial-1", "trial-2"]
    evaluated = next(r for r in children if r.info.run_name == "mmafnet/best/seed1")
    assert "test/mae" in evaluated.data.metrics
    assert float(evaluated.data.params["model_cfg.alpha"]) == pytest.approx(best["model"]["alpha"])
    for run in children:
        if run.info.run_name.startswith("trial-"):
            assert "test/mae" not in run.data.metrics, "tuning never sees the test split"

    # The best params' runs are the study's models (trials keep no weights): the best of them on
    # the study's validation metric is registered, never chosen on test.
    rows = result["evaluation"]["rows"]
    best_run = min(rows, key=lambda r: r["valid/mae"])
    (reg,) = result["registered"]
    assert reg["name"] == "msaflow-tune-flow-mmafnet" and reg["metric"] == "valid/mae"
    version = client.get_model_version_by_alias(reg["name"], "best")
    assert version.run_id == best_run["run_id"] and version.version == reg["version"]
    assert version.tags["optuna.study"] == "flow" and version.tags["msaflow.kind"] == "tune"
    model = mlflow.pyfunc.load_model(f"models:/{reg['name']}@best")
    assert model.metadata.run_id == best_run["run_id"]

    again = tune(
        **kwargs
    )  # resumed: the study already holds its 3 trials, the same parent run is reused
    assert (
        again["parent_run_id"] == result["parent_run_id"]
        and again["counts"]["COMPLETE"] + again["counts"]["PRUNED"] == 3
    )
    (again_reg,) = again["registered"]  # the cached runs: no new version, the alias stays
    assert (again_reg["version"], again_reg["created"]) == (reg["version"], False)
    assert len(client.search_model_versions(f"name = '{reg['name']}'")) == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--storage", "nosuchdb://x/y"], ["--storage", "cannot open the Optuna storage"]),
        (["--metric", "test/mae"], ["validation metric"]),
        (["--include", "gamma"], ["gamma", "optional parameter"]),
    ],
)
def test_cli_bad_input_is_a_clear_error(args, words, tiny_sim, mlflow_uri):
    result = runner.invoke(
        app, ["tune", "--data", str(tiny_sim), "--tracking-uri", mlflow_uri, *args]
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "Traceback" not in text
    for word in words:
        assert word in text, text


def test_cli_empty_range_is_a_clear_error(tmp_path, tiny_sim, mlflow_uri):
    space = tmp_path / "space.yaml"
    space.write_text("alpha: {low: 0.5, high: 0.5}\n")
    result = runner.invoke(
        app, ["tune", "--data", str(tiny_sim), "--tracking-uri", mlflow_uri, "--space", str(space)]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "alpha" in text and "empty or inverted range" in text, text


def test_default_metric_follows_the_data_task(tmp_path, mlflow_uri):
    """Emotion data is tuned on valid/f1_weighted (maximised) unless --metric says otherwise."""
    result = tune(
        model="mmcl",
        data="sim-iemocap",
        scale=0.05,
        epochs=1,
        n_trials=1,
        sampler="random",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        tracking_uri=mlflow_uri,
        eval_seeds=[],
        out=str(tmp_path / "best.yaml"),
        train_overrides={"batch_size": 16},
    )
    assert result["metric"] == "valid/f1_weighted" and result["direction"] == "maximize"
    assert "f1_weighted" in result["study"]
