"""The pipeline end to end on a tiny simulation: real Prefect (test harness), real MLflow
(SQLite)."""

from dataclasses import replace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from msaflow.flows.pipeline import pipeline
from msaflow.models import get_spec

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _children(client, experiment_id, parent_run_id):
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def _assert_prefect_artifacts(result):
    """The flow run's summary table and a pointer to MLflow are Prefect artifacts, read back
    through Prefect's own client (what the Prefect UI shows)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    from msaflow.tasks.artifacts import artifact_key

    async def read(key):
        async with get_client() as client:
            # every field given: Prefect 3.8's client sends None for unset ones, which its own
            # server refuses (422)
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=20,
            )

    def latest(kind):
        key = artifact_key(kind, result["experiment"])
        found = asyncio.run(read(key))
        assert found, key
        return max(found, key=lambda a: a.created)

    table = latest("summary")
    assert table.type == "table"
    names = {row["run"] for row in table.data} if isinstance(table.data, list) else set()
    if not names:  # Prefect stores the table as JSON text
        import json

        names = {row["run"] for row in json.loads(table.data)}
    assert names == {r["run_name"] for r in result["rows"]}
    pointer = latest("results")
    assert pointer.type == "markdown" and result["parent_run_id"] in pointer.data

    async def train_task_tags():
        from prefect.client.schemas.filters import TaskRunFilterName
        from prefect.client.schemas.sorting import TaskRunSort

        async with get_client() as client:
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="train-mmafnet-full")),
                flow_run_filter=FlowRunFilter(),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                limit=5,
            )
            return [set(r.tags) for r in runs]

    tags = asyncio.run(train_task_tags())
    assert tags and {"model:mmafnet", "variant:full", "seed:1"} <= tags[0]
    # the `gpu` tag (its concurrency limit: one training per GPU) only on a training that uses one
    import torch

    assert ("gpu" in tags[0]) == torch.cuda.is_available(), tags[0]


def test_only_a_training_on_cuda_carries_the_gpu_tag(monkeypatch):
    import torch

    from msaflow.flows.pipeline import run_tags, train_tags
    from msaflow.models.spec import Cell
    from msaflow.tasks.config import resolve_run_config

    cfg = resolve_run_config("mmafnet", "full", "quick")
    cell = Cell("full", "full")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_tags(cfg, cell) == run_tags(cfg, cell)  # auto on a CPU: no gpu slot taken
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_tags(cfg, cell) == run_tags(cfg, cell) | {"gpu"}
    on_cpu = replace(cfg, train=replace(cfg.train, device="cpu"))
    assert "gpu" not in train_tags(on_cpu, cell)  # an explicit CPU run, even with a GPU there


def test_pipeline_end_to_end_then_cached(tiny_sim, mlflow_uri):
    kwargs = dict(
        data=str(tiny_sim),
        variants=["none", "full"],
        seeds=[1],
        epochs=2,
        experiment="e2e",
        tracking_uri=mlflow_uri,
        train_overrides={"batch_size": 16},
    )
    result = pipeline(**kwargs)
    _assert_prefect_artifacts(result)
    assert not result["failures"]
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = {
        r.info.run_name: r
        for r in _children(client, result["experiment_id"], result["parent_run_id"])
    }
    assert set(children) == {"mmafnet/none/seed1", "mmafnet/full/seed1"}
    full = children["mmafnet/full/seed1"]
    assert full.info.status == "FINISHED"
    assert (
        full.data.tags["variant"] == "full"
        and full.data.tags["seed"] == "1"
        and full.data.tags["model"] == "mmafnet"
    )
    assert "msaflow.git_commit" in full.data.tags and full.data.tags["dataset"]
    assert full.data.tags["mlflow.source.git.commit"] == full.data.tags["msaflow.git_commit"]
    assert full.data.params["train.epochs"] == "2" and full.data.params["model_cfg.sgm"] == "True"
    # the trainable parameter count, one key for every model family
    resolved = mlflow.artifacts.load_dict(
        f"{full.info.artifact_uri}/config/resolved.json"
    )  # the model as it was trained, rebuilt from the logged config
    built = get_spec("mmafnet").model_cls(get_spec("mmafnet").config_cls(**resolved["model_cfg"]))
    assert full.data.params["model.num_params"] == str(sum(p.numel() for p in built.parameters()))
    for key in (
        "test/acc2_has0",
        "test/acc2_non0",
        "test/f1_has0",
        "test/f1_non0",
        "test/acc5",
        "test/acc7",
        "test/mae",
        "test/corr",
    ):
        assert key in full.data.metrics, key
    assert len(client.get_metric_history(full.info.run_id, "valid/mae")) == 2
    assert len(client.get_metric_history(full.info.run_id, "sgm/omega_t")) > 2
    for key in ("sgm/phi_t", "ipr/dist_a", "ipr/phi_v", "afm/g_c", "probe/epoch_acc_t"):
        assert client.get_metric_history(full.info.run_id, key), key
    none = children["mmafnet/none/seed1"]
    assert "sgm/omega_t" not in none.data.metrics and "afm/g_t" not in none.data.metrics
    artifacts = {a.path for a in client.list_artifacts(full.info.run_id, "plots")}
    assert {
        "plots/learning_curves.png",
        "plots/sgm_traces.png",
        "plots/ipr_traces.png",
    } <= artifacts
    stats = mlflow.artifacts.load_dict(f"runs:/{full.info.run_id}/data/standardization.json")
    assert stats["fit_on"] == "train" and set(stats["modalities"]) == {"text", "audio", "vision"}
    assert full.inputs.dataset_inputs, "dataset manifest must be a logged input"
    models = mlflow.search_logged_models(
        experiment_ids=[result["experiment_id"]], output_format="list"
    )
    assert {m.source_run_id for m in models} >= {full.info.run_id}
    parent_artifacts = {a.path for a in client.list_artifacts(result["parent_run_id"])}
    assert {"summary.csv", "summary.md"} <= parent_artifacts

    again = pipeline(**kwargs)
    assert all(row["cached"] for row in again["rows"]) and len(again["rows"]) == 2
    # Issue 14.10: the re-run's parent was empty. Each cached result now has a link child in it.
    links = {
        r.info.run_name: r
        for r in _children(client, result["experiment_id"], again["parent_run_id"])
    }
    assert set(links) == set(children)
    for name, link in links.items():
        source = children[name]
        assert link.data.tags["msaflow.cached_from"] == source.info.run_id, "nothing retrained"
        assert link.info.status == "FINISHED" and "msaflow.key" not in link.data.tags
        assert link.data.params == source.data.params
        assert link.data.metrics["test/mae"] == pytest.approx(source.data.metrics["test/mae"])
    assert {r["linked_run_id"] for r in again["rows"]} == {r.info.run_id for r in links.values()}

    # A run deleted in the MLflow UI: its cache entry must not stand; that run retrains.
    client.delete_run(full.info.run_id)
    third = pipeline(**kwargs)
    rows = {r["cell"]: r for r in third["rows"]}
    assert not rows["full"]["cached"] and rows["full"]["run_id"] != full.info.run_id
    assert rows["none"]["cached"] and rows["none"]["run_id"] == none.info.run_id
    retrained = client.get_run(rows["full"]["run_id"])
    assert retrained.data.tags["mlflow.parentRunId"] == third["parent_run_id"]
    assert retrained.info.status == "FINISHED" and "test/mae" in retrained.data.metrics
    assert len(client.get_metric_history(retrained.info.run_id, "valid/mae")) == 2, (
        "trained, not reloaded"
    )
    assert "msaflow.resumed_from_epoch" not in retrained.data.tags, (
        "from scratch, not its old checkpoint"
    )

    # --force retrains what the cache holds.
    forced = pipeline(**{**kwargs, "variants": ["none"]}, force=True)
    (row,) = forced["rows"]
    assert not row["cached"] and row["run_id"] != none.info.run_id
    assert client.get_run(row["run_id"]).data.tags["mlflow.parentRunId"] == forced["parent_run_id"]
    assert "msaflow.resumed_from_epoch" not in client.get_run(row["run_id"]).data.tags, (
        "from scratch"
    )


def test_one_failing_cell_loses_nothing(tiny_sim, mlflow_uri, monkeypatch):
    import msaflow.tasks.train

    real = msaflow.tasks.train.train_model

    def broken_sgm(
        cfg, *args, **kw
    ):  # a run that fails while training (a bad config fails earlier)
        if cfg.variant == "sgm":
            raise FloatingPointError("simulated divergence: loss is nan")
        return real(cfg, *args, **kw)

    monkeypatch.setattr(msaflow.tasks.train, "train_model", broken_sgm)
    cells = [{"name": "none", "variant": "none"}, {"name": "broken", "variant": "sgm"}]
    result = pipeline(
        data=str(tiny_sim),
        cells=cells,
        seeds=[7],
        epochs=1,
        experiment="fail",
        tracking_uri=mlflow_uri,
    )
    assert [r["cell"] for r in result["rows"]] == ["none"]
    assert [f["cell"] for f in result["failures"]] == ["broken"]
    assert "simulated divergence" in result["failures"][0]["error"]
    client = MlflowClient(mlflow_uri)
    runs = {
        r.info.run_name: r
        for r in _children(client, result["experiment_id"], result["parent_run_id"])
    }
    assert runs["mmafnet/none/seed7"].info.status == "FINISHED"
    assert runs["mmafnet/broken/seed7"].info.status == "FAILED"
    assert "simulated divergence" in runs["mmafnet/broken/seed7"].data.tags["msaflow.error"]
    assert client.get_run(result["parent_run_id"]).info.status == "FINISHED"


def test_subject_folds_cross_validation(mlflow_uri, msaflow_home):
    from msaflow.feature_store import load_split

    result = pipeline(
        data="sim-cmdc",
        model="mmcl",
        variants=["full"],
        seeds=[1],
        epochs=1,
        folds=3,
        scale=0.5,
        experiment="cv",
        tracking_uri=mlflow_uri,
    )
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
    """``make_folds`` failed after the parent run opened, leaving it RUNNING: now it runs first."""
    from msaflow.feature_store import DataError

    with pytest.raises(DataError, match="subject"):
        pipeline(
            data=str(tiny_sim),
            variants=["none"],
            epochs=1,
            folds=2,
            experiment="nofolds",
            tracking_uri=mlflow_uri,
        )
    exp = MlflowClient(mlflow_uri).get_experiment_by_name("nofolds")
    assert exp is None or not MlflowClient(mlflow_uri).search_runs([exp.experiment_id])


def test_bad_folds_fail_before_any_run(tiny_sim, mlflow_uri):
    from msaflow.tasks.config import ConfigError

    with pytest.raises(ConfigError, match="--folds"):
        pipeline(
            data=str(tiny_sim),
            variants=["none"],
            epochs=1,
            folds=1,
            experiment="badfolds",
            tracking_uri=mlflow_uri,
        )
    assert MlflowClient(mlflow_uri).get_experiment_by_name("badfolds") is None


def test_parent_ends_failed_on_any_error(tiny_sim, mlflow_uri, monkeypatch):
    """An error after the parent opened left it RUNNING forever."""
    import msaflow.flows.pipeline

    def lost(**kwargs):
        raise RuntimeError("simulated crash in the grid")

    monkeypatch.setattr(msaflow.flows.pipeline, "run_grid", lost)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline(
            data=str(tiny_sim),
            variants=["none"],
            epochs=1,
            experiment="crash",
            tracking_uri=mlflow_uri,
        )
    client = MlflowClient(mlflow_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("crash").experiment_id])
    assert parent.info.status == "FAILED" and "simulated crash" in parent.data.tags["msaflow.error"]
