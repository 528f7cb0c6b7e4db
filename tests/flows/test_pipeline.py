"""The pipeline end to end on a tiny simulation: real Prefect (test harness), real MLflow (SQLite)."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _children(client, experiment_id, parent_run_id):
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_pipeline_end_to_end_then_cached(tiny_sim, mlflow_uri):
    kwargs = dict(data=str(tiny_sim), variants=["none", "full"], seeds=[1], epochs=2, experiment="e2e",
                  tracking_uri=mlflow_uri, train_overrides={"batch_size": 16})
    result = pipeline(**kwargs)
    assert not result["failures"]
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = {r.info.run_name: r for r in _children(client, result["experiment_id"], result["parent_run_id"])}
    assert set(children) == {"mmafnet/none/seed1", "mmafnet/full/seed1"}
    full = children["mmafnet/full/seed1"]
    assert full.info.status == "FINISHED"
    assert full.data.tags["variant"] == "full" and full.data.tags["seed"] == "1" and full.data.tags["model"] == "mmafnet"
    assert "msaflow.git_commit" in full.data.tags and full.data.tags["dataset"]
    assert full.data.params["train.epochs"] == "2" and full.data.params["model_cfg.sgm"] == "True"
    for key in ("test/acc2_has0", "test/acc2_non0", "test/f1_has0", "test/f1_non0", "test/acc5", "test/acc7",
                "test/mae", "test/corr"):
        assert key in full.data.metrics, key
    assert len(client.get_metric_history(full.info.run_id, "valid/mae")) == 2
    assert len(client.get_metric_history(full.info.run_id, "sgm/omega_t")) > 2
    for key in ("sgm/phi_t", "ipr/dist_a", "ipr/phi_v", "afm/g_c", "probe/epoch_acc_t"):
        assert client.get_metric_history(full.info.run_id, key), key
    none = children["mmafnet/none/seed1"]
    assert "sgm/omega_t" not in none.data.metrics and "afm/g_t" not in none.data.metrics
    artifacts = {a.path for a in client.list_artifacts(full.info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/sgm_traces.png", "plots/ipr_traces.png"} <= artifacts
    assert full.inputs.dataset_inputs, "dataset manifest must be a logged input"
    models = mlflow.search_logged_models(experiment_ids=[result["experiment_id"]], output_format="list")
    assert {m.source_run_id for m in models} >= {full.info.run_id}
    parent_artifacts = {a.path for a in client.list_artifacts(result["parent_run_id"])}
    assert {"summary.csv", "summary.md"} <= parent_artifacts

    again = pipeline(**kwargs)
    assert all(row["cached"] for row in again["rows"]) and len(again["rows"]) == 2
    assert not _children(client, result["experiment_id"], again["parent_run_id"]), "nothing retrains"


def test_one_failing_cell_loses_nothing(tiny_sim, mlflow_uri):
    cells = [{"name": "none", "variant": "none"},
             {"name": "broken", "variant": "sgm", "overrides": {"train": {"lr": -1.0}}}]
    result = pipeline(data=str(tiny_sim), cells=cells, seeds=[7], epochs=1, experiment="fail",
                      tracking_uri=mlflow_uri)
    assert [r["cell"] for r in result["rows"]] == ["none"]
    assert [f["cell"] for f in result["failures"]] == ["broken"]
    assert "learning rate" in result["failures"][0]["error"].lower()
    client = MlflowClient(mlflow_uri)
    runs = {r.info.run_name: r for r in _children(client, result["experiment_id"], result["parent_run_id"])}
    assert runs["mmafnet/none/seed7"].info.status == "FINISHED"
    assert runs["mmafnet/broken/seed7"].info.status == "FAILED"
    assert "learning rate" in runs["mmafnet/broken/seed7"].data.tags["msaflow.error"].lower()


def test_subject_folds_cross_validation(mlflow_uri, msaflow_home):
    from feature_store import load_split

    result = pipeline(data="sim-cmdc", model="mmcl", variants=["full"], seeds=[1], epochs=1, folds=3,
                      scale=0.5, experiment="cv", tracking_uri=mlflow_uri)
    assert not result["failures"]
    assert sorted(r["cell"] for r in result["rows"]) == ["full/fold1", "full/fold2", "full/fold3"]
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert "cv/full/test/mae" in parent.data.metrics
    children = _children(client, result["experiment_id"], result["parent_run_id"])
    assert {r.info.run_name for r in children} == {f"mmcl/full/fold{i}/seed1" for i in (1, 2, 3)}
    stores = sorted((msaflow_home / "stores").glob("sim-cmdc-x0.5-*-fold*of3-s0"))
    assert len(stores) == 3
    tests = [set(load_split(s, "test").subjects) for s in stores]
    for s, test_subjects in zip(stores, tests, strict=True):
        assert not test_subjects & set(load_split(s, "train").subjects)
    assert not tests[0] & tests[1] and not tests[1] & tests[2]


def test_folds_need_subjects(tiny_sim, mlflow_uri):
    from feature_store import DataError

    with pytest.raises(DataError, match="subject"):
        pipeline(data=str(tiny_sim), variants=["none"], epochs=1, folds=2, tracking_uri=mlflow_uri)
