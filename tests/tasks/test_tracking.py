"""The tracking store check: an unusable store is named, quickly, before anything trains."""

from __future__ import annotations

import socket
import time

import pytest

from tasks.tracking import TrackingError, check_tracking


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_sqlite_store_is_usable(tmp_path):
    check_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_unreachable_http_server_is_named(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingError, match="127.0.0.1"):
        check_tracking(uri)


def test_unreachable_postgres_fails_fast_without_mlflow_retries():
    pytest.importorskip("psycopg2")
    uri = f"postgresql://nobody@127.0.0.1:{_closed_port()}/mlflow"
    start = time.perf_counter()
    with pytest.raises(TrackingError, match="not usable"):
        check_tracking(uri)
    assert time.perf_counter() - start < 30  # MLflow's SQLAlchemy store alone retries ~2 minutes


def test_a_killed_attempt_is_superseded_by_its_rerun(tmp_path):
    """A SIGKILLed process leaves its child RUNNING; the re-run of the same key marks it KILLED."""
    from tasks import tracking as tr

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tr.ensure_experiment(uri, "e")
    orphan = tr.start_run(uri, exp, "mmafnet/full/seed1", tags={"msaflow.key": "k1"})
    other_key = tr.start_run(uri, exp, "mmafnet/none/seed1", tags={"msaflow.key": "k2"})
    rerun = tr.start_run(uri, exp, "mmafnet/full/seed1", tags={"msaflow.key": "k1"})

    assert tr.supersede_stale_runs(uri, exp, "k1", rerun) == [orphan]
    c = tr.client(uri)
    assert c.get_run(orphan).info.status == "KILLED"
    assert c.get_run(orphan).data.tags["msaflow.superseded_by"] == rerun
    assert c.get_run(rerun).info.status == "RUNNING"
    assert c.get_run(other_key).info.status == "RUNNING"
