"""The pipeline's training tasks on a local Dask cluster (prefect-dask), tracked in MLflow."""

import pytest
from mlflow.tracking import MlflowClient

from msaflow.flows.pipeline import pipeline
from msaflow.flows.serve import task_runner_for


def test_task_runner_for_kinds():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner_for(), ThreadPoolTaskRunner)
    assert isinstance(task_runner_for("auto"), ThreadPoolTaskRunner)
    local = task_runner_for("dask", workers=3)
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3
    remote = task_runner_for("auto", address="tcp://10.0.0.5:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    with pytest.raises(ValueError):
        task_runner_for("ray")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_on_local_dask_cluster(tiny_sim, mlflow_uri):
    runner = task_runner_for("dask", workers=2, processes=False)
    result = pipeline.with_options(task_runner=runner)(
        data=str(tiny_sim),
        variants=["none", "full"],
        seeds=[3],
        epochs=1,
        experiment="dask",
        tracking_uri=mlflow_uri,
        train_overrides={"batch_size": 16},
    )
    assert not result["failures"], result["failures"]
    client = MlflowClient(mlflow_uri)
    children = client.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'",
    )
    assert {r.info.run_name for r in children} == {"mmafnet/none/seed3", "mmafnet/full/seed3"}
    assert all(r.info.status == "FINISHED" for r in children)
    assert client.get_run(result["parent_run_id"]).info.status == "FINISHED"
