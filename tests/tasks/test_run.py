"""The train task's plain function: metrics reach MLflow live, epoch by epoch, and a resumed run
ends with each epoch logged exactly once."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

import msaflow.tasks.train
from msaflow.tasks import tracking as tr
from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.prepare import prepare_store
from msaflow.tasks.refs import Tracking
from msaflow.tasks.run import open_parent_run, train_run


class Interrupt(Exception):
    pass


@pytest.fixture
def world(tiny_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("MSAFLOW_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ref = prepare_store(str(tiny_sim))
    tracking = Tracking(uri=uri, experiment_id=tr.ensure_experiment(uri, "live"), experiment="live")
    cfg = resolve_run_config(
        "mmafnet",
        "full",
        "quick",
        train_overrides={"epochs": 3},
        input_spec=ref.input_spec,
        data_task=ref.task,
        class_names=ref.class_names,
    )
    from msaflow.models.spec import Cell

    parent = open_parent_run(tracking, ref, "mmafnet", [Cell("full", "full")], [1], "quick", "t")
    return uri, ref, tracking, cfg, parent


def _history(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_each_epoch_is_in_mlflow_while_the_run_is_still_running(world, monkeypatch):
    uri, ref, tracking, cfg, parent = world
    real, seen = msaflow.tasks.train.train_model, []

    def watching(*args, callbacks=(), **kw):
        def look(epoch, record):
            (run,) = MlflowClient(uri).search_runs(
                [tracking.experiment_id], filter_string="tags.`msaflow.kind` = 'train'"
            )
            seen.append(
                (
                    run.info.status,
                    _history(uri, run.info.run_id, "valid/mae"),
                    bool(MlflowClient(uri).get_metric_history(run.info.run_id, "sgm/omega_t")),
                )
            )

        return real(*args, callbacks=[*callbacks, look], **kw)

    monkeypatch.setattr(msaflow.tasks.train, "train_model", watching)
    out = train_run(cfg, "full", ref, tracking, parent)
    assert seen[0] == ("RUNNING", [0], True) and seen[1] == ("RUNNING", [0, 1], True)
    assert _history(uri, out["run_id"], "valid/mae") == [0, 1, 2]  # once each, not twice


def test_an_epoch_checkpointed_but_not_logged_is_logged_once_on_resume(world, monkeypatch):
    uri, ref, tracking, cfg, parent = world
    real_live = tr.log_epoch_live

    def dies_at_epoch_1(uri_, run_id, history, steps, epochs):
        if history[0]["epoch"] == 1:
            raise Interrupt  # after epoch 1's checkpoint, before it reached MLflow
        real_live(uri_, run_id, history, steps, epochs)

    monkeypatch.setattr(tr, "log_epoch_live", dies_at_epoch_1)
    with pytest.raises(Interrupt):
        train_run(cfg, "full", ref, tracking, parent)
    monkeypatch.setattr(tr, "log_epoch_live", real_live)
    out = train_run(cfg, "full", ref, tracking, parent)
    for key in ("valid/mae", "train/loss/total", "ipr/phi_t"):
        assert _history(uri, out["run_id"], key) == [0, 1, 2], key
    steps = _history(uri, out["run_id"], "sgm/omega_t")
    assert len(steps) == len(set(steps)) > 0
