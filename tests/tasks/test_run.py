"""The train task's plain function: metrics reach MLflow live, epoch by epoch, a resumed run
ends with each epoch logged exactly once, and concurrent trainings on a multi-GPU machine each
train on their own GPU (a faked device count: no GPU here)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
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
        data_kind=ref.data_kind,
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
    assert MlflowClient(uri).get_run(out["run_id"]).data.tags["msaflow.device"] == "cpu"


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


class _CurrentDevice:
    """Stands in for ``torch.cuda.device`` (a CPU build cannot enter it): records, per thread,
    which GPU the block made current."""

    current = threading.local()

    def __init__(self, index: int):
        self.index = index

    def __enter__(self):
        self.current.index = self.index

    def __exit__(self, *exc):
        self.current.index = None
        return False


class _Stop(Exception):
    pass


def test_concurrent_trainings_each_train_on_their_own_gpu(world, monkeypatch):
    from msaflow import devices

    uri, ref, tracking, cfg, parent = world
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(Path(os.environ["MSAFLOW_HOME"]) / "locks"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device", _CurrentDevice)
    barrier, seen = threading.Barrier(2, timeout=60), []

    def on_gpu(run_cfg, *args, **kw):
        barrier.wait()  # both trainings are in train_model at once
        seen.append((run_cfg.train.device, _CurrentDevice.current.index))
        raise _Stop  # nothing can really train on a faked GPU

    monkeypatch.setattr(msaflow.tasks.train, "train_model", on_gpu)
    cfgs = [cfg, replace(cfg, train=replace(cfg.train, seed=2))]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(train_run, c, "full", ref, tracking, parent) for c in cfgs]
        for f in futures:
            with pytest.raises(_Stop):
                f.result()
    # the config keeps "auto" (its fingerprint names the checkpoint); the thread's current GPU
    # differs
    assert sorted(seen) == [("auto", 0), ("auto", 1)]
    runs = MlflowClient(uri).search_runs(
        [tracking.experiment_id], filter_string="tags.`msaflow.kind` = 'train'"
    )
    assert sorted(r.data.tags["msaflow.device"] for r in runs) == ["cuda:0", "cuda:1"]
    assert {r.info.status for r in runs} == {"FAILED"}
    assert sum(devices.SLOTS.load.values()) == 0  # a failed training returns its slot


def test_one_gpu_trains_as_before(world, monkeypatch):
    uri, ref, tracking, cfg, parent = world
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", _CurrentDevice)
    seen = []

    def on_gpu(run_cfg, *args, **kw):
        seen.append((run_cfg.train.device, getattr(_CurrentDevice.current, "index", None)))
        raise _Stop

    monkeypatch.setattr(msaflow.tasks.train, "train_model", on_gpu)
    with pytest.raises(_Stop):
        train_run(cfg, "full", ref, tracking, parent)
    assert seen == [("auto", None)]  # no slot, no current-device switch: select_device decides
    (run,) = MlflowClient(uri).search_runs(
        [tracking.experiment_id], filter_string="tags.`msaflow.kind` = 'train'"
    )
    assert run.data.tags["msaflow.device"] == "cuda"


def _monitors() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


def test_a_training_run_records_system_metrics(world):
    from dataclasses import replace

    uri, ref, tracking, cfg, parent = world
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, system_metrics_interval=0.1))
    out = train_run(cfg, "full", ref, tracking, parent)
    metrics = MlflowClient(uri).get_run(out["run_id"]).data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics, sorted(metrics)
    assert len(_history(uri, out["run_id"], "system/cpu_utilization_percentage")) >= 2
    assert not _monitors(), "the monitor thread is stopped"


def test_the_monitor_stops_when_training_fails_and_can_be_off(world, monkeypatch):
    import time
    from dataclasses import replace

    from msaflow.models.spec import Cell

    uri, ref, tracking, cfg, _ = world

    def fails(*args, **kw):
        assert len(_monitors()) == int(enabled)  # running while training runs
        time.sleep(0.35)
        raise Interrupt

    monkeypatch.setattr(msaflow.tasks.train, "train_model", fails)
    for enabled in (True, False):
        cfg = replace(
            cfg, train=replace(cfg.train, system_metrics=enabled, system_metrics_interval=0.1)
        )
        parent = open_parent_run(tracking, ref, "mmafnet", [Cell("full", "full")], [1], "q", "t")
        with pytest.raises(Interrupt):
            train_run(cfg, "full", ref, tracking, parent)
        assert not _monitors(), "stopped although training raised"
        (run,) = MlflowClient(uri).search_runs(
            [tracking.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        )
        assert run.info.status == "FAILED"
        has = any(k.startswith("system/") for k in run.data.metrics)
        assert has == enabled, (enabled, sorted(run.data.metrics))


def test_system_metrics_settings_leave_the_run_key_alone(tiny_sim):
    from dataclasses import replace

    from msaflow.tasks.run import run_key

    ref = prepare_store(str(tiny_sim))
    tracking = Tracking(uri="sqlite:///unused.db", experiment_id="1")
    cfg = resolve_run_config("mmafnet", "full", "quick", input_spec=ref.input_spec)
    off = replace(cfg, train=replace(cfg.train, system_metrics=False, system_metrics_interval=1.0))
    assert run_key(off, ref, tracking) == run_key(cfg, ref, tracking)
    assert replace(cfg, train=replace(cfg.train, epochs=9)).fingerprint() != cfg.fingerprint()
