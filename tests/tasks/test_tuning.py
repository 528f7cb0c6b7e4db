"""Optuna tuning on real storage (SQLite), real MLflow (SQLite) and real training on a tiny
simulation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from msaflow.tasks import tracking as tr
from msaflow.tasks import tuning as tu
from msaflow.tasks.config import ConfigError, load_overrides_file, resolve_run_config

ROOT = Path(__file__).resolve().parents[2]


def _spec(tiny_sim, tmp_path, mlflow_uri=None, **kw) -> tu.StudySpec:
    from msaflow.feature_store import read_manifest

    manifest = read_manifest(tiny_sim)
    space = tu.load_search_space("mmafnet", include=("lr",), entries=kw.pop("entries", None))
    spec = tu.StudySpec(
        study=kw.pop("study", "t"),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        model="mmafnet",
        variant="full",
        preset="quick",
        metric="valid/mae",
        n_trials=kw.pop("n_trials", 6),
        space=tu.space_to_dict(space),
        data_path=str(tiny_sim),
        data_kind=manifest.data_kind,
        input_spec=manifest.input_spec(),
        class_names=manifest.class_names,
        epochs=kw.pop("epochs", 3),
        train_overrides={"batch_size": 16, "num_threads": 1},
        sampler="random",
        seed=0,
        poll_seconds=0.5,
        **kw,
    )
    if mlflow_uri:
        spec.tracking_uri = mlflow_uri
        spec.experiment_id = tr.ensure_experiment(mlflow_uri, "tune-test")
        spec.parent_run_id = tr.start_run(
            mlflow_uri, spec.experiment_id, f"tune/{spec.study}", tags={"msaflow.kind": "tune"}
        )
    tu.create_or_load_study(spec)
    return spec


def _finished(spec) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=spec.study, storage=spec.storage)
    return study.get_trials(states=tu.FINISHED)


# --------------------------------------------------------------------------------- bad input (fast)


@pytest.mark.parametrize(
    "entries, words",
    [
        ({"alpha": {"low": 1.0, "high": 1.0}}, ["alpha", "empty or inverted"]),
        ({"delta": {"low": 0.5, "high": 0.1}}, ["delta", "low (0.5) must be < high (0.1)"]),
        ({"gamma_nope": {"low": 0.1, "high": 1.0}}, ["gamma_nope", "unknown parameter"]),
        ({"lambda1": {"low": 0.0, "high": 1.0, "log": True}}, ["lambda1", "log-scale", "low > 0"]),
        (
            {"lr": {"low": "1e-4", "high": "1e-2", "log": True, "target": "model"}},
            ["lr", "unknown parameter"],
        ),
        ({"alpha": {"low": 0.1, "hi": 1.0}}, ["alpha", "unknown key"]),
    ],
)
def test_bad_search_space_names_the_param(entries, words):
    with pytest.raises(ConfigError) as info:
        tu.load_search_space("mmafnet", entries=entries)
    for word in words:
        assert word in str(info.value)


def test_space_from_yaml_file_and_defaults(tmp_path):
    space = tu.load_search_space("mmafnet", ROOT / "experiments" / "search_space.example.yaml")
    assert {"alpha", "delta", "lambda1", "lambda2", "lr", "modulation_epochs"} == set(space)
    assert (
        space["lr"].target == "train" and space["lr"].log and space["lr"].low == pytest.approx(1e-4)
    )
    assert space["modulation_epochs"].type == "int"
    default = tu.load_search_space("mmafnet")
    assert set(default) == {"alpha", "delta", "lambda1", "lambda2"}
    assert default["lambda1"].log and default["lambda2"].log and not default["alpha"].log
    path = tmp_path / "s.yaml"
    path.write_text(
        "delta: null\nalpha: {high: 1.0}\nlr: {low: 1e-4, high: 1e-2, log: true, target: train}\n"
    )
    space = tu.load_search_space("mmafnet", path)
    assert "delta" not in space and space["alpha"].high == 1.0 and space["alpha"].low == 0.05
    assert space["lr"].low == pytest.approx(1e-4)  # YAML's string "1e-4" is read as a number
    mmcl = tu.load_search_space("mmcl", include=("lr",))
    assert set(mmcl) == set(tu.SPACES["mmcl"]) | {"lr"}


def test_metric_direction_and_test_metrics_refused():
    assert tu.metric_direction("valid/mae") == "minimize"
    assert tu.metric_direction("valid/acc7") == "maximize"
    for bad in ("test/mae", "mae", "valid/"):
        with pytest.raises(ConfigError, match="validation metric"):
            tu.metric_direction(bad)


def test_bad_storage_url_is_a_clear_error(tmp_path):
    for url in ("nosuchdb://x/y", f"sqlite:///{tmp_path}/missing/dir/optuna.db"):
        with pytest.raises(ConfigError) as info:
            tu.make_storage(url)
        assert "--storage" in str(info.value) and "cannot open the Optuna storage" in str(
            info.value
        )


# ----------------------------------------------------------------------------------- a study (fast)


def test_small_study_prunes_tracks_and_exports(tiny_sim, tmp_path, mlflow_uri):
    # A wide lr range makes some trials clearly worse early: the median pruner then really prunes.
    entries = {"lr": {"low": 1e-5, "high": 3e-2, "log": True, "target": "train"}}
    spec = _spec(
        tiny_sim,
        tmp_path,
        mlflow_uri,
        entries=entries,
        n_trials=8,
        epochs=3,
        pruner_options={"n_startup_trials": 2, "n_warmup_steps": 0},
    )
    result = tu.run_worker(spec, 0, log=lambda msg: None)
    assert result["COMPLETE"] + result["PRUNED"] == 8
    assert result["PRUNED"] >= 1, result
    study = optuna.load_study(study_name=spec.study, storage=spec.storage)
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert (
            t.user_attrs["epochs_run"] < 3
            and len(t.intermediate_values) == t.user_attrs["epochs_run"]
        )
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.user_attrs["epochs_run"] == 3 and sorted(t.intermediate_values) == [0, 1, 2]

    summary = tu.finalize_study(spec, tmp_path / "best.yaml")
    client = MlflowClient(mlflow_uri)
    children = client.search_runs(
        [spec.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}'"
    )
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    finished = {t.number: t for t in study.get_trials(states=tu.FINISHED)}
    assert len(children) == len(study.trials) and set(finished) <= set(by_number)
    for number, t in finished.items():
        run = by_number[number]
        assert (
            run.info.run_name == f"trial-{number}" and run.data.tags["optuna.state"] == t.state.name
        )
        assert run.data.params["trial_number"] == str(number)
        assert float(run.data.params["lambda1"]) == pytest.approx(t.params["lambda1"])
        history = client.get_metric_history(run.info.run_id, "valid/mae")
        assert len(history) == t.user_attrs["epochs_run"]

    parent = client.get_run(spec.parent_run_id)
    assert {f"best.{k}" for k in ("alpha", "delta", "lambda1", "lambda2", "lr")} <= set(
        parent.data.params
    )
    artifacts = {a.path for a in client.list_artifacts(spec.parent_run_id)}
    plots = {a.path for a in client.list_artifacts(spec.parent_run_id, "plots")}
    assert {"best.yaml", "trials.csv"} <= artifacts
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= plots
    assert summary["best_value"] == pytest.approx(study.best_value)

    best = load_overrides_file(summary["best_path"])  # what `msaflow run --params` reads
    assert set(best["model"]) == {"alpha", "delta", "lambda1", "lambda2"} and set(
        best["train"]
    ) == {"lr"}
    cfg = resolve_run_config(
        "mmafnet", model_overrides=best["model"], train_overrides=best["train"]
    )
    assert cfg.model_cfg.alpha == pytest.approx(study.best_params["alpha"])
    assert yaml.safe_load(Path(summary["best_path"]).read_text())["train"]["lr"] == pytest.approx(
        study.best_params["lr"]
    )

    # Re-running a finished study adds nothing: n_trials is the study's total.
    again = tu.run_worker(spec, 0, log=lambda msg: None)
    assert again["trials_run"] == 0 and len(_finished(spec)) == 8


def test_resume_with_another_metric_is_refused(tiny_sim, tmp_path):
    spec = _spec(tiny_sim, tmp_path, n_trials=1)
    spec.metric = "valid/acc7"
    with pytest.raises(ConfigError, match="metric"):
        tu.create_or_load_study(spec)


def test_resume_on_another_dataset_is_refused(tiny_sim, tmp_path):
    """Issue 14.8: MOSI and MOSEI both ingested as ``aligned_50``; tune on MOSEI resumed the MOSI
    study because resume checked only model, metric and space. The content hash is now identity."""
    spec = _spec(tiny_sim, tmp_path, n_trials=1, dataset_hash="a" * 24)
    study = tu.create_or_load_study(spec)  # same data: resumes
    assert study.user_attrs["msaflow.dataset_hash"] == "a" * 24
    spec.dataset_hash, spec.data_path = "b" * 24, "/data/MOSEI/aligned_50"
    with pytest.raises(
        ConfigError, match=r"dataset content hash aaaaaaaaaaaa .* not bbbbbbbbbbbb \(/data/MOSEI"
    ):
        tu.create_or_load_study(spec)


def test_a_study_from_before_the_hash_records_it_on_resume(tiny_sim, tmp_path):
    spec = _spec(tiny_sim, tmp_path, n_trials=1)  # no hash: as studies made before it was identity
    spec.dataset_hash = "c" * 24
    assert tu.create_or_load_study(spec).user_attrs["msaflow.dataset_hash"] == "c" * 24
    spec.dataset_hash = "d" * 24
    with pytest.raises(ConfigError, match="dataset content hash"):
        tu.create_or_load_study(spec)


def test_default_study_name_holds_the_content_hash():
    from msaflow.flows.tune import default_study_name

    mosi = default_study_name("mmafnet", "aligned_50", "valid/mae", "0123456789abcdef01234567")
    mosei = default_study_name("mmafnet", "aligned_50", "valid/mae", "fedcba9876543210fedcba98")
    assert mosi == "mmafnet-aligned_50-01234567-mae" and mosi != mosei


# ----------------------------------------------------------------------- processes: kill, parallel


def _start_worker(spec, tmp_path, index: int) -> subprocess.Popen:
    path = tmp_path / f"spec-{index}.json"
    path.write_text(spec.to_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "msaflow.flows.tune", "--worker", str(path), "--index", str(index)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_worker_resumes_and_finishes_the_count(tiny_sim, tmp_path, mlflow_uri):
    spec = _spec(
        tiny_sim,
        tmp_path,
        mlflow_uri,
        n_trials=3,
        epochs=5,
        pruner="none",
        heartbeat_interval=1,
        grace_period=3,
    )
    proc = _start_worker(spec, tmp_path, 0)
    study = optuna.load_study(study_name=spec.study, storage=spec.storage)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill -9 mid-training of a trial
            if any(
                t.state == TrialState.RUNNING and t.intermediate_values for t in study.get_trials()
            ):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no trial reached RUNNING in time")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert len(running) == 1
    killed = running[0]

    result = tu.run_worker(spec, 0, log=lambda msg: None)  # the resumed process
    trials = optuna.load_study(study_name=spec.study, storage=spec.storage).get_trials()
    finished = [t for t in trials if t.state in tu.FINISHED]
    assert len(finished) == 3 and result["COMPLETE"] == 3
    stale = next(t for t in trials if t.number == killed.number)
    assert stale.state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert (
        len(retry) == 1
        and retry[0].state == TrialState.COMPLETE
        and retry[0].params == killed.params
    )
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params), "no duplicate param sets among finished trials"
    tu.finalize_study(spec, tmp_path / "best.yaml")
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [spec.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}'"
    )
    states = {
        int(r.data.tags["optuna.trial_number"]): (r.data.tags["optuna.state"], r.info.status)
        for r in runs
    }
    assert states[killed.number] == ("FAIL", "FAILED")
    assert sorted(n for n, (s, _) in states.items() if s == "COMPLETE") == sorted(
        t.number for t in finished
    )


@pytest.mark.slow
def test_two_workers_add_up_to_the_requested_trials(tiny_sim, tmp_path, mlflow_uri):
    spec = _spec(tiny_sim, tmp_path, mlflow_uri, n_trials=6, epochs=2, pruner="none")
    procs = [_start_worker(spec, tmp_path, i) for i in range(2)]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trials = optuna.load_study(study_name=spec.study, storage=spec.storage).get_trials()
    finished = [t for t in trials if t.state in tu.FINISHED]
    assert len(finished) == 6
    assert len({t.number for t in finished}) == 6
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == 6, "the two workers sampled distinct params (seed + worker index)"
    assert all(t.state in tu.FINISHED or t.user_attrs.get("msaflow.surplus") for t in trials)
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [spec.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}' "
        "and tags.`optuna.state` = 'COMPLETE'",
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == sorted(
        t.number for t in finished
    )


def test_samplers_and_pruners():
    assert isinstance(tu.make_sampler("cmaes", 0), optuna.samplers.CmaEsSampler)
    assert isinstance(tu.make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(tu.make_pruner("hyperband", 5), optuna.pruners.HyperbandPruner)
    assert isinstance(tu.make_pruner("none", 5), optuna.pruners.NopPruner)
    for bad in (lambda: tu.make_sampler("grid", 0), lambda: tu.make_pruner("sometimes", 3)):
        with pytest.raises(ConfigError):
            bad()
    # a restarted worker does not replay the param sequence of the one it replaces
    assert (
        tu.worker_seed(0, 0, 0) == 0
        and tu.worker_seed(0, 1, 0) == 1
        and tu.worker_seed(0, 0, 3) != 0
    )


def test_pruner_warmup_scales_with_the_epochs_and_can_be_overridden():
    from msaflow.tasks import tuning as tu

    assert tu.make_pruner("median", 4)._n_warmup_steps == 0  # quick preset: prune from epoch 1
    assert tu.make_pruner("percentile", 50)._n_warmup_steps == 10  # paper preset: after 10 epochs
    assert tu.make_pruner("median", 50, {"n_warmup_steps": 2})._n_warmup_steps == 2
