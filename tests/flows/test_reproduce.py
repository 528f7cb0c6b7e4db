"""``reproduce`` on a tiny simulation: an interrupted reproduction resumes, then the report.

One reproduction is shared by the tests of this module: its first attempt loses one run to an
injected failure, its second attempt must redo only that run, under the same parent. To stay fast
it runs a two-cell cut of mmafnet-table2 (none and full x 2 seeds, 1 epoch, quick preset),
registered for the test in ``TABLES`` like any table; the full four-cell table runs in the slow
MLflow UI test.
"""

import json
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import msaflow.tasks.train
from msaflow.cli import app
from msaflow.flows.reproduce import TableSpec, membership_tags, reproduce
from msaflow.models import get_spec
from msaflow.models.spec import Cell
from msaflow.tasks.checks import TABLES, get_table
from msaflow.tasks.config import ConfigError
from msaflow.tasks.paper_results import paper_table

CELLS = ["none", "full"]
TINY = TableSpec(
    model="mmafnet",
    cells=(Cell("none", "none"), Cell("full", "full")),
    baseline="none",
    paper="mmafnet-table2",
    description="mmafnet-table2, first and last row",
)


def _children(uri: str, result: dict) -> list:
    return MlflowClient(uri).search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'",
    )


@pytest.fixture(scope="module")
def resumed(tiny_sim, tmp_path_factory, prefect_harness):
    uri = f"sqlite:///{tmp_path_factory.mktemp('reproduce') / 'mlflow.db'}"
    out = tmp_path_factory.mktemp("report") / "report.md"
    kwargs = dict(
        data=str(tiny_sim),
        seeds=2,
        epochs=1,
        tracking_uri=uri,
        experiment="repro",
        out=str(out),
        max_workers=2,
    )
    real = msaflow.tasks.train.train_model

    def interrupted(cfg, *args, **kw):
        if cfg.variant == "full" and cfg.train.seed == 2:
            raise RuntimeError("simulated interruption")
        return real(cfg, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TABLES, "tiny-table2", TINY)
        with pytest.MonkeyPatch.context() as broken:
            broken.setattr(msaflow.tasks.train, "train_model", interrupted)
            first = reproduce("tiny-table2", **kwargs)
            first_children = _children(uri, first)
        second = reproduce("tiny-table2", **kwargs)
    return {
        "uri": uri,
        "out": out,
        "first": first,
        "first_children": first_children,
        "second": second,
    }


def test_an_interrupted_reproduction_resumes_without_redoing_finished_runs(resumed):
    first, second, uri = resumed["first"], resumed["second"], resumed["uri"]
    assert [(f["cell"], f["seed"]) for f in first["failures"]] == [("full", 2)]
    assert len(first["rows"]) == 3 and first["report"], "a report even with a run missing"

    assert (
        second["parent_run_id"] == first["parent_run_id"]
        and second["resumed"]
        and not second["failures"]
    )
    cached = {(r["cell"], r["seed"]) for r in second["rows"] if r["cached"]}
    assert len(second["rows"]) == 4 and (("full", 2) not in cached) and len(cached) == 3
    first_ids = {(r["cell"], r["seed"]): r["run_id"] for r in first["rows"]}
    assert all(
        first_ids[(r["cell"], r["seed"])] == r["run_id"] for r in second["rows"] if r["cached"]
    )

    children = _children(uri, second)
    pairs = Counter((r.data.tags["cell"], int(r.data.tags["seed"])) for r in children)
    assert len(children) == 4 and set(pairs.values()) == {1}, "no duplicate child runs"
    assert {r.info.status for r in children} == {"FINISHED"}
    failed_before = next(
        r
        for r in resumed["first_children"]
        if r.data.tags["cell"] == "full" and r.data.tags["seed"] == "2"
    )
    assert failed_before.info.status == "FAILED"
    assert failed_before.info.run_id in {r.info.run_id for r in children}, (
        "the failed run was resumed in place"
    )
    assert {r.info.run_name for r in children} == {
        f"mmafnet/{c}/seed{s}" for c in CELLS for s in (1, 2)
    }
    assert all(r.data.tags["msaflow.table"] == "tiny-table2" for r in children)


def test_cells_differ_only_in_what_the_variant_changes(resumed):
    runs = _children(resumed["uri"], resumed["second"])
    keys = {k for r in runs for k in r.data.params}
    differing = {k for k in keys if len({r.data.params.get(k) for r in runs}) > 1}
    variant_keys = {f"model_cfg.{k}" for v in get_spec("mmafnet").variants.values() for k in v}
    # model.num_params follows the variant too (AFM's gates, SGM's probes)
    assert differing - {"model.num_params"} == {"variant", "train.seed"} | variant_keys
    metric_keys = [{k for k in r.data.metrics if k.startswith("test/")} for r in runs]
    assert all(m == metric_keys[0] for m in metric_keys), "the same metric keys everywhere"


def test_the_report_of_the_reproduction(resumed):
    second, uri = resumed["second"], resumed["uri"]
    md = resumed["out"].read_text()
    assert second["report"]["markdown"] == str(resumed["out"])
    assert "simulation benchmark sim-mosi-x0.05, NOT CMU-MOSI" in md
    for cell in CELLS:
        assert f"| {cell} | 2 |" in md, cell  # every cell, with both seeds
    assert "paper (CMU-MOSI)" in md and "paper (CMU-MOSEI)" in md and "Paired comparison" in md
    assert "Missing or failed" not in md, "the resumed run filled the gap"
    folder = resumed["out"].parent
    assert "| p (Holm) | p (BH) |" in md, "comparisons corrected for multiplicity"
    assert "## Against the simulation's oracle" in md and "− oracle tav" in md
    parent = MlflowClient(uri).get_run(second["parent_run_id"])
    assert "tav" in json.loads(parent.data.tags["msaflow.oracle"]), "the oracle is in MLflow"
    assert {"metrics.png", "curves.png", "traces_sgm.png", "traces_ipr.png"} <= {
        p.name for p in folder.glob("*.png")
    }
    assert "| full | SGM + IPR + AFM | mae |" in md
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    logged = {a.path for a in MlflowClient(uri).list_artifacts(second["parent_run_id"], "report")}
    assert {
        "report/report.md",
        "report/report.html",
        "report/metrics.png",
        "report/traces_sgm.png",
    } <= logged

    # `msaflow report` rebuilds it from MLflow alone: no run is added
    before = len(_children(uri, second))
    out = resumed["out"].parent / "again" / "report.md"
    result = CliRunner().invoke(
        app, ["report", "--experiment", "repro", "--tracking-uri", uri, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == md.replace(str(resumed["out"].parent), str(out.parent))
    assert len(_children(uri, second)) == before


def test_the_best_run_on_validation_is_registered_once_and_serves(resumed, tiny_sim):
    import mlflow
    import numpy as np

    from msaflow.feature_store import load_dataset
    from msaflow.tasks.model_registry import register_best, registered_name

    first, second, uri = resumed["first"], resumed["second"], resumed["uri"]
    name = registered_name("repro", "mmafnet")
    assert name == "msaflow-repro-mmafnet"
    client = MlflowClient(uri)
    # valid/mae chose every run's best epoch, so it chooses the best run; test never does
    best = min(second["rows"], key=lambda r: r["valid/mae"])
    version = client.get_model_version_by_alias(name, "best")
    assert version.run_id == best["run_id"]
    (reg,) = second["registered"]
    assert (reg["version"], reg["metric"]) == (version.version, "valid/mae")
    assert reg["value"] == pytest.approx(best["valid/mae"])
    assert version.tags["msaflow.select_metric"] == "valid/mae"

    # the resumed reproduction added a version only if its best run changed
    first_best = min(first["rows"], key=lambda r: r["valid/mae"])
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == (1 if first_best["run_id"] == best["run_id"] else 2)
    assert len({v.run_id for v in versions}) == len(versions), "one version per run"
    again = register_best(
        uri, "repro", second["rows"], kind="reproduce", parent_run_id=second["parent_run_id"]
    )
    assert [(r["version"], r["created"], r["alias_moved"]) for r in again] == [
        (version.version, False, False)
    ]
    assert len(client.search_model_versions(f"name = '{name}'")) == len(versions)

    # models:/<name>@best serves the raw store features, with that run's test figures
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    finally:
        mlflow.set_tracking_uri(None)
    _, splits = load_dataset(tiny_sim, splits=("test",))
    test = splits["test"]
    raw = {m: test.features[m] for m in test.features}
    raw |= {f"{m}_len": np.asarray(test.lengths[m], np.int64) for m in test.features}
    mae = float(np.abs(model.predict(raw) - test.labels).mean())
    assert mae == pytest.approx(best["test/mae"], abs=1e-5)


def test_unknown_table_is_a_usage_error():
    result = CliRunner().invoke(app, ["reproduce", "mmafnet-table9"])
    assert result.exit_code == 2
    assert "mmafnet-table9" in result.output and "mmafnet-table2" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ConfigError, match="mmcl-table1"):
        get_table("nope")


def test_membership_tags_round_trip():
    from types import SimpleNamespace

    from msaflow.tasks.report import _membership

    ids = [f"{i:032x}" for i in range(400)]  # more than one 5000-character tag holds
    tags = membership_tags(ids)
    assert int(tags["msaflow.runs.n"]) > 1 and all(len(v) <= 5000 for v in tags.values())
    assert _membership(SimpleNamespace(data=SimpleNamespace(tags=tags))) == ids


def test_table_registry_is_consistent_with_models_and_papers():
    for name, spec in TABLES.items():
        model = get_spec(spec.model)
        names = [c.name for c in spec.cells]
        assert len(set(names)) == len(names), name
        assert all(c.variant in model.variants for c in spec.cells), name
        assert set(spec.baselines().values()) <= set(names), name
        if spec.paper is None:
            continue
        paper = paper_table(spec.paper)
        for rows in paper.results.values():
            assert set(rows) <= set(names), (name, set(rows) - set(names))


def test_table3_scales_the_modulation_period_with_the_epochs():
    spec = get_table("mmafnet-table3")
    at = {c.name: c.overrides["model"]["modulation_epochs"] for c in spec.resolve_cells(50)}
    assert at["sgm-ep15"] == 15 and at["sgm_ipr-ep30"] == 30
    at = {c.name: c.overrides["model"]["modulation_epochs"] for c in spec.resolve_cells(10)}
    assert [at[f"sgm-ep{e}"] for e in (15, 20, 25, 30)] == [3, 4, 5, 6]
    cells = {c.name: c for c in spec.resolve_cells(10)}
    assert (
        cells["sgm-ep20"].overrides["model"]["ipr"] is False
        and cells["sgm_ipr-ep20"].variant == "full"
    )
    assert (
        spec.baselines()["sgm-ep15"] == "sgm-ep25"
        and spec.baselines()["sgm_ipr-ep30"] == "sgm_ipr-ep25"
    )


def test_reproduce_takes_params_as_run_does(tiny_sim, tmp_path, prefect_harness):
    """Issue 14.1: ``reproduce`` took no overrides, so MMCL Table I on IEMOCAP could not be run."""
    import json

    params = tmp_path / "params.yaml"
    params.write_text("model: {alpha: 0.7}\ntrain: {lr: 0.002, batch_size: 16}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one = TableSpec(
        model="mmafnet",
        cells=(Cell("sgm", "sgm"),),
        baseline="sgm",
        paper="mmafnet-table2",
        description="one cell",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TABLES, "one-cell", one)
        result = CliRunner().invoke(
            app,
            [
                "reproduce",
                "one-cell",
                "--data",
                str(tiny_sim),
                "--seeds",
                "1",
                "--epochs",
                "1",
                "--tracking-uri",
                uri,
                "--params",
                str(params),
                "--out",
                str(tmp_path / "r" / "report.md"),
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    (run,) = summary["runs"]
    child = MlflowClient(uri).get_run(run["run_id"])
    assert (
        child.data.params["model_cfg.alpha"] == "0.7" and child.data.params["train.lr"] == "0.002"
    )
    assert child.data.params["model_cfg.sgm"] == "True", "the cell's variant still applies"
    parent = MlflowClient(uri).get_run(summary["parent_run_id"])
    assert json.loads(parent.data.tags["msaflow.params"])["model"] == {"alpha": 0.7}


def test_two_workers_train_two_runs_at_once(tiny_sim, tmp_path, prefect_harness):
    """--workers 2 overlaps trainings (an evaluate task waiting for its training once held the other
    worker thread). Each training waits at a two-party barrier before it starts: only two
    trainings in flight at once get past it, whatever the machine's load (a start-time compare
    failed on a busy CI machine)."""
    import threading

    real = msaflow.tasks.train.train_model
    barrier = threading.Barrier(2, timeout=120)

    def meet(cfg, *args, **kw):
        barrier.wait()  # BrokenBarrierError, hence a failed run, if the other never comes
        return real(cfg, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TABLES, "tiny-table2", TINY)
        mp.setattr(msaflow.tasks.train, "train_model", meet)
        result = reproduce(
            "tiny-table2",
            data=str(tiny_sim),
            seeds=1,
            epochs=1,
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="overlap",
            out=str(tmp_path / "report.md"),
            max_workers=2,
        )
    assert result["failures"] == [] and len(result["rows"]) == 2


def test_runs_finish_while_others_still_train(resumed):
    """Each training's evaluation follows it, not the whole grid: with 4 runs on 2 workers the
    first run is FINISHED (evaluated) before the last one starts."""
    runs = resumed["first_children"]
    ends = [r.info.end_time for r in runs if r.info.status == "FINISHED" and r.info.end_time]
    assert ends and min(ends) < max(r.info.start_time for r in runs)


def test_twin_cells_never_train_one_checkpoint_at_once(tiny_sim, tmp_path, prefect_harness):
    """Two cells that resolve to one config share a run key, hence one checkpoint folder: the
    second waits for the first instead of racing it (two threads once renamed each other's
    temporary away: FileNotFoundError on best.pt, CI of stop 22). Both cells get their row."""
    import threading
    import time

    twins = TableSpec(
        model="mmafnet",
        cells=(Cell("a", "none"), Cell("b", "none", {"model": {}})),
        baseline="a",
        paper=None,
        description="two names for one config",
    )
    real = msaflow.tasks.train.train_model
    lock, busy, overlaps = threading.Lock(), Counter(), []

    def watched(cfg, *args, checkpoint_dir=None, **kw):
        with lock:
            busy[str(checkpoint_dir)] += 1
            overlaps.append(busy[str(checkpoint_dir)])
        try:
            time.sleep(0.3)  # widen the window a race would need
            return real(cfg, *args, checkpoint_dir=checkpoint_dir, **kw)
        finally:
            with lock:
                busy[str(checkpoint_dir)] -= 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TABLES, "twins", twins)
        mp.setattr(msaflow.tasks.train, "train_model", watched)
        result = reproduce(
            "twins",
            data=str(tiny_sim),
            seeds=1,
            epochs=1,
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="twins",
            out=str(tmp_path / "report.md"),
            max_workers=2,
        )
    assert result["failures"] == []
    assert sorted(r["cell"] for r in result["rows"]) == ["a", "b"]
    assert overlaps and max(overlaps) == 1


def test_table1_trains_a_model_family_per_cell_and_sets_the_papers_rows_beside(
    tiny_sim, tmp_path, prefect_harness
):
    """``mmafnet-table1``: every cell is another model (TFN, LMF, MulT, MISA, Self-MM beside
    MMAFNet), each compared with MMAFNet; the report has the paper's Table 1 row per model."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = reproduce(
        "mmafnet-table1",
        data=str(tiny_sim),
        seeds=1,
        epochs=1,
        tracking_uri=uri,
        experiment="table1",
        out=str(tmp_path / "report.md"),
        max_workers=2,
    )
    assert result["failures"] == []
    models = {r["cell"]: r["model"] for r in result["rows"]}
    assert models == {c: c for c in ("mmafnet", "tfn", "lmf", "mult", "misa", "self_mm")}
    tags = {r.data.tags["cell"]: r.data.tags["model"] for r in _children(uri, result)}
    assert tags == models
    report = (tmp_path / "report.md").read_text()
    assert "| tfn | TFN | mae |" in report and "| self_mm | Self-MM |" in report
    assert "| tfn | mmafnet | mae |" in report  # each baseline against MMAFNet


def test_a_comparison_table_needs_its_preset_in_every_model():
    with pytest.raises(ConfigError, match="'tfn' has no preset 'paper-fast'"):
        reproduce("mmafnet-table1", preset="paper-fast", seeds=1, epochs=1)


def test_the_report_is_a_task_run_of_the_flow(resumed):
    """The report step is a Prefect task (retried when MLflow is busy, visible in the UI)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    async def report_runs():
        async with get_client() as client:
            return await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="report-")),
                flow_run_filter=FlowRunFilter(),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                limit=10,
            )

    runs = asyncio.run(report_runs())
    assert runs and runs[0].state.is_completed()
    assert resumed["second"]["report"], "and it still writes the report"
