"""The Python API (``msaflow.run`` ...): typed results from the real flows, user errors as
exceptions, settings applied on import without touching what the caller set.

Real Prefect (the session's test harness, or its own temporary server in a fresh interpreter),
real MLflow (SQLite), real Optuna; a tiny simulation, one epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import msaflow
from msaflow.errors import ConfigError, DataError
from msaflow.tasks.checks import TABLES, get_table

ROOT = Path(__file__).resolve().parents[2]
# What ``msaflow.api`` documents it sets (``msaflow.settings.apply_defaults`` + MSAFLOW_HOME).
SETTINGS = (
    "MSAFLOW_HOME",
    "PREFECT_HOME",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT",
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
    "PREFECT_LOCAL_STORAGE_PATH",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "OMP_WAIT_POLICY",
)


def _fresh_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything msaflow or the test session set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTINGS and not k.startswith(("PREFECT_", "MLFLOW_", "PYTEST_"))
    }
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _python(code: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ import and settings
def test_import_msaflow_is_cheap_and_changes_nothing(tmp_path):
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "import msaflow\n"
        "at_import = sorted(sys.modules)\n"
        "same = os.environ == before\n"
        "made = os.path.exists('.msaflow')\n"
        "msaflow.RunResult\n"  # the API module: settings, still no heavy import
        "print(json.dumps({'import': at_import, 'same': same, 'made': made,"
        " 'api': sorted(sys.modules)}))\n"
    )
    got = _python(code, tmp_path, _fresh_env())
    heavy = ("torch", "prefect", "mlflow", "optuna", "pandas", "numpy")
    project = ("flows", "tasks", "models", "feature_store")  # msaflow.<name>, and no bare name
    project = (*project, *(f"msaflow.{p}" for p in project))

    def top(modules: list[str]) -> set[str]:
        return {m.split(".")[0] for m in modules} | {".".join(m.split(".")[:2]) for m in modules}

    assert not top(got["import"]) & {*heavy, *project}, sorted(
        top(got["import"]) & {*heavy, *project}
    )
    assert [m for m in got["import"] if m.startswith("msaflow")] == ["msaflow"]
    assert got["same"] and not got["made"], "import msaflow must not touch os.environ or disk"
    assert not top(got["api"]) & {*heavy, *project}
    assert "msaflow.api" in got["api"] and (tmp_path / ".msaflow" / "prefect").is_dir()


def test_settings_on_import_keep_what_the_user_set(tmp_path):
    mine = {
        "PREFECT_LOGGING_LEVEL": "ERROR",
        "HF_HUB_OFFLINE": "0",
        "OMP_WAIT_POLICY": "ACTIVE",
        "PREFECT_HOME": str(tmp_path / "my-prefect"),
    }
    code = (
        "import json, os\n"
        "import msaflow.api as api\n"
        f"print(json.dumps({{'env': {{k: os.environ.get(k) for k in {list(SETTINGS)!r}}}, "
        "'applied': dict(api.APPLIED)}))\n"
    )
    got = _python(code, tmp_path, _fresh_env(**mine))
    env, applied = got["env"], got["applied"]
    for key, value in mine.items():
        assert env[key] == value and key not in applied, key
    home = tmp_path / ".msaflow"
    assert env["MSAFLOW_HOME"] == str(home.resolve()), "pinned to the import's working directory"
    assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(home.resolve() / "prefect" / "results")
    assert set(applied) == set(SETTINGS) - set(mine), "exactly the documented variables"


def test_a_run_in_a_fresh_interpreter_writes_no_prefect_state_to_home(tiny_sim, tmp_path):
    home, msaflow_home = tmp_path / "home", tmp_path / "work" / ".msaflow"
    home.mkdir()
    msaflow_home.parent.mkdir()
    code = (
        "import json, msaflow\n"
        f"r = msaflow.run({str(tiny_sim)!r}, variants=['none'], seeds=[1], epochs=1)\n"
        "print(json.dumps({'ok': r.ok, 'uri': r.tracking_uri, 'n': len(r.rows)}))\n"
    )
    env = _fresh_env(HOME=str(home))
    env.pop("MSAFLOW_HOME", None)  # the default: ./.msaflow of the notebook's folder
    got = _python(code, msaflow_home.parent, env)
    assert got["ok"] and got["n"] == 1
    assert got["uri"] == f"sqlite:///{msaflow_home / 'mlflow.db'}"
    assert not (home / ".prefect").exists(), sorted(p.name for p in home.iterdir())
    assert (msaflow_home / "prefect" / "prefect.db").is_file()
    assert any((msaflow_home / "prefect" / "results").iterdir()), "cached results in our home"


# ------------------------------------------------------------------------------ the API
@pytest.fixture(scope="module")
def ran(tiny_sim, tmp_path_factory, prefect_harness):
    uri = f"sqlite:///{tmp_path_factory.mktemp('api-run') / 'mlflow.db'}"
    result = msaflow.run(
        data=str(tiny_sim),
        model="mmafnet",
        variants=["none", "full"],
        seeds=[1],
        epochs=1,
        experiment="api",
        tracking_uri=uri,
    )
    return uri, result


def test_run_returns_typed_rows_of_runs_in_mlflow(ran, tiny_sim):
    uri, result = ran
    assert isinstance(result, msaflow.RunResult) and result.ok and result.failures == ()
    assert [(r.cell, r.variant, r.seed) for r in result.rows] == [
        ("none", "none", 1),
        ("full", "full", 1),
    ]
    client = MlflowClient(uri)
    for row in result.rows:
        assert isinstance(row, msaflow.RunRow)
        run = client.get_run(row.run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == row.run_name
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert row.test["test/mae"] == pytest.approx(run.data.metrics["test/mae"])
        assert "valid/mae" in row.valid and all(k.startswith("test/") for k in row.test)
    assert client.get_run(result.parent_run_id).info.experiment_id == result.experiment_id
    assert result.tracking_uri == uri and result.experiment == "api"
    assert result.dataset.path == tiny_sim and result.dataset.task == "sentiment"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.parent_run_id = "x"  # type: ignore[misc]
    frame = result.to_frame()
    assert list(frame["cell"]) == ["none", "full"] and list(frame["run_id"]) == [
        r.run_id for r in result.rows
    ]
    assert {"seed", "test/mae", "test/acc7", "valid/mae"} <= set(frame.columns)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"model": "nope"}, ConfigError, ["model: unknown model 'nope'", "mmafnet"]),
        ({"variants": ["none", "bogus"]}, ConfigError, ["variants:", "bogus", "sgm_ipr"]),
        ({"seeds": 3}, ConfigError, ["seeds:", "[1, 2]"]),
        ({"preset": "fastest"}, ConfigError, ["preset:", "fastest", "quick"]),
        ({"data": "sim-nope"}, DataError, ["data:", "sim-<profile>"]),
        ({"workers": 0}, ConfigError, ["workers:"]),
    ],
)
def test_user_mistakes_raise_clear_errors(kwargs, error, words, tiny_sim, mlflow_uri):
    kwargs = {"data": str(tiny_sim), "epochs": 1, "tracking_uri": mlflow_uri, **kwargs}
    with pytest.raises(error) as info:
        msaflow.run(**kwargs)
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "--" not in message, f"names the keyword, not the CLI option: {message}"


@pytest.mark.usefixtures("prefect_harness")
def test_reproduce_a_tiny_table_returns_its_report(tiny_sim, tmp_path, monkeypatch):
    table2 = get_table("mmafnet-table2")
    tiny = dataclasses.replace(table2, cells=(table2.cells[0], table2.cells[-1]))  # none, full
    monkeypatch.setitem(TABLES, "api-tiny-table2", tiny)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = msaflow.reproduce(
        "api-tiny-table2",
        data=tiny_sim,  # a Path is fine
        seeds=1,
        epochs=1,
        tracking_uri=uri,
        out=tmp_path / "report" / "report.md",
        workers=1,
    )
    assert isinstance(result, msaflow.ReproduceResult) and result.ok and not result.resumed
    assert {(r.cell, r.seed) for r in result.rows} == {("none", 1), ("full", 1)}
    assert result.experiment == "reproduce-api-tiny-table2"
    assert result.report_path == tmp_path / "report" / "report.md" and result.report_path.is_file()
    assert result.report_html_path is not None and result.report_html_path.is_file()
    assert "none" in result.report_markdown and result.report_error is None
    assert len(result.to_frame()) == 2
    # the best run on validation, registered: the typed record says where
    [reg] = result.registered
    assert isinstance(reg, msaflow.Registered) and reg.metric == "valid/mae"
    assert reg.model_uri == "models:/msaflow-reproduce-api-tiny-table2-mmafnet@best"
    best = min(result.rows, key=lambda r: r.valid["valid/mae"])
    assert reg.run_id == best.run_id and reg.value == pytest.approx(best.valid["valid/mae"])
    assert (
        int(MlflowClient(uri).get_model_version_by_alias(reg.name, "best").version) == reg.version
    )
    with pytest.raises(ConfigError, match="unknown table"):
        msaflow.reproduce("no-such-table", data=tiny_sim, tracking_uri=uri)


@pytest.mark.usefixtures("prefect_harness")
def test_tune_two_trials_returns_best_params(tiny_sim, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = msaflow.tune(
        model="mmafnet",
        data=str(tiny_sim),
        trials=2,
        epochs=1,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        study="api-study",
        pruner="none",
        eval_seeds=[1],
        tracking_uri=uri,
        out=tmp_path / "best.yaml",
    )
    assert isinstance(result, msaflow.TuneResult)
    assert result.study == "api-study" and result.metric == "valid/mae"
    assert result.direction == "minimize" and result.finished == 2
    assert isinstance(result.best_value, float) and result.best_params
    assert set(result.best_params) <= {"model", "train"} and result.best_params["model"]
    assert result.best_path == tmp_path / "best.yaml" and result.best_path.is_file()
    assert [t.number for t in result.trials] == [0, 1]
    assert all(isinstance(t, msaflow.Trial) and t.state == "COMPLETE" for t in result.trials)
    assert min(t.value for t in result.trials) == pytest.approx(result.best_value)
    assert len(result.to_frame()) == 2 and "alpha" in result.to_frame().columns
    [row] = result.evaluation
    assert MlflowClient(uri).get_run(row.run_id).info.status == "FINISHED"
    assert "best_test_mae_mean" in result.test and len(result.evaluation_frame()) == 1
    [reg] = result.registered
    assert reg.run_id == row.run_id and reg.model_uri.endswith("-mmafnet@best")


def test_load_dataset_returns_splits(tiny_sim):
    ds = msaflow.load_dataset(tiny_sim)
    assert isinstance(ds, msaflow.Dataset) and ds.path == tiny_sim and ds.task == "sentiment"
    assert set(ds.splits) == {"train", "valid", "test"}
    train = ds["train"]
    assert train.features["text"].shape[0] == len(train.ids) == len(train.labels) > 0
    assert set(msaflow.load_dataset(tiny_sim, splits=["test"]).splits) == {"test"}
    with pytest.raises(ConfigError, match="splits"):
        msaflow.load_dataset(tiny_sim, splits=["dev"])
    with pytest.raises(KeyError, match="no split 'dev'"):
        ds["dev"]
    with pytest.raises(DataError, match="data"):
        msaflow.load_dataset(tiny_sim / "missing")


def test_load_dataset_takes_the_cli_data_strings(msaflow_home):
    ds = msaflow.load_dataset("sim-mosi", scale=0.05)  # synthesized under $MSAFLOW_HOME/stores
    assert ds.path.parent == msaflow_home / "stores" and ds.name.startswith("sim-mosi")
    assert len(ds["valid"].ids) > 0


def test_a_dataset_names_its_kind_data_kind_and_task(tiny_sim):
    """``Dataset.data_kind`` (the manifest's ``task``); ``task`` stays as its deprecated name."""
    ds = msaflow.load_dataset(tiny_sim)
    assert ds.data_kind == ds.task == ds.manifest.data_kind == "sentiment"
