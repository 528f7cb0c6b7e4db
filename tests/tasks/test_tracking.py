"""The tracking store check: an unusable store is named, quickly, before anything trains."""

from __future__ import annotations

import socket
import time

import pytest

from msaflow.tasks.tracking import TrackingError, check_tracking


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_sqlite_store_is_usable(tmp_path):
    check_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_store_reached_a_moment_ago_is_not_probed_again(tmp_path, monkeypatch):
    """CLI and flow both check; the second check of a store that just answered costs nothing,
    and after the TTL a store that went away is named again."""
    from msaflow.tasks import tracking as tr

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_tracking(uri)

    def gone(_uri):
        raise OSError("store went away")

    monkeypatch.setattr(tr, "_probe_database", gone)
    check_tracking(uri)  # within the TTL: not probed
    monkeypatch.setattr(tr, "_PROBE_TTL_S", 0.0)
    with pytest.raises(TrackingError, match="store went away"):
        check_tracking(uri)


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
    from msaflow.tasks import tracking as tr

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


@pytest.fixture(scope="module")
def race_uri(tmp_path_factory) -> str:
    """One store for the race tests (a fresh SQLite schema costs seconds); each uses new
    experiments."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('race') / 'mlflow.db'}"
    check_tracking(uri)
    return uri


def _race(work, n: int = 2) -> list[BaseException]:
    """Run ``work(i)`` in ``n`` threads released at once; return what they raised."""
    import threading

    barrier, errors = threading.Barrier(n), []

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("locked", [True, False], ids=["threads", "processes-retry-only"])
def test_concurrent_dataset_inputs_never_collide(race_uri, tiny_sim, monkeypatch, locked):
    """Two training tasks log the same dataset input at once (issue 14.12): with the old code 8 of
    10 repetitions raised ``UNIQUE constraint failed: datasets.experiment_id, datasets.name, ...``.
    Without the process lock (workers in other processes) the retry alone must hold."""
    import contextlib

    from msaflow.feature_store import read_manifest
    from msaflow.tasks import tracking as tr

    if not locked:
        monkeypatch.setattr(tr, "_WRITE_LOCK", contextlib.nullcontext())
    uri = race_uri
    manifest = read_manifest(tiny_sim)
    c = tr.client(uri)
    for rep in range(10):  # a fresh experiment each time: the dataset row is per experiment
        exp = tr.ensure_experiment(uri, f"race-{locked}-{rep}")
        runs = [tr.start_run(uri, exp, f"train-{i}") for i in range(2)]
        errors = _race(lambda i, runs=runs: tr.log_dataset_input(uri, runs[i], manifest, tiny_sim))
        assert not errors, errors
        for run_id in runs:
            assert len(c.get_run(run_id).inputs.dataset_inputs) == 1


def test_concurrent_experiment_creation_is_get_or_create(race_uri, monkeypatch):
    import contextlib

    from msaflow.tasks import tracking as tr

    monkeypatch.setattr(tr, "_WRITE_LOCK", contextlib.nullcontext())  # as two processes would
    uri = race_uri
    for rep in range(5):
        ids: list[str] = []
        assert not _race(
            lambda i, rep=rep, ids=ids: ids.append(tr.ensure_experiment(uri, f"new-{rep}"))
        )
        assert len(ids) == 2 and ids[0] == ids[1]
