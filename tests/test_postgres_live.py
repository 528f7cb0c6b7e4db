"""Optuna and MLflow on the PostgreSQL server that every machine of this project runs
(127.0.0.1:5432, trust auth), through msaflow's own paths: ``msaflow tune --storage
postgresql+psycopg2://...
--tracking-uri postgresql+psycopg2://...``.

Fast (not marked slow) so that CI checks the PostgreSQL paths on every run. Each test session
creates two throwaway databases and drops them at the end; it skips, with the reason, where no
server answers (a laptop without PostgreSQL). ``tests/test_postgres.py`` (slow) checks the compose
init script on a cluster of its own.
"""

from __future__ import annotations

import os
import uuid

import pytest
from typer.testing import CliRunner

HOST, PORT, USER = (
    os.environ.get("MSAFLOW_TEST_PGHOST", "127.0.0.1"),
    int(os.environ.get("MSAFLOW_TEST_PGPORT", "5432")),
    os.environ.get("MSAFLOW_TEST_PGUSER", "postgres"),
)


def _admin():
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=PORT, user=USER, dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def pg_urls():
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install -e '.[dev]'")
    try:
        admin = _admin()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {HOST}:{PORT} ({str(exc).strip().splitlines()[0]})")
    names = {k: f"msaflow_test_{k}_{uuid.uuid4().hex[:8]}" for k in ("optuna", "mlflow")}
    with admin.cursor() as cur:
        for db in names.values():
            cur.execute(f'CREATE DATABASE "{db}"')
    try:
        yield {k: f"postgresql+psycopg2://{USER}@{HOST}:{PORT}/{db}" for k, db in names.items()}
    finally:
        with admin.cursor() as cur:
            for db in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_tune_on_postgres_storage_and_tracking(pg_urls, tmp_path, prefect_harness):
    import optuna
    from mlflow.tracking import MlflowClient

    from msaflow.cli import app

    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--scale",
            "0.05",
            "--eval-seeds",
            "none",
            "--storage",
            pg_urls["optuna"],
            "--tracking-uri",
            pg_urls["mlflow"],
            "--study",
            "pg-live",
            "--out",
            str(tmp_path / "best.yaml"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pg-live", storage=pg_urls["optuna"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2
    assert (tmp_path / "best.yaml").is_file()
    client = MlflowClient(pg_urls["mlflow"])
    exp = client.get_experiment_by_name("msaflow-tune")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= 3  # the study's parent and one child per trial
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)


def test_bad_postgres_storage_is_one_clear_line(tmp_path):
    from msaflow.cli import app

    bad = f"postgresql+psycopg2://{USER}@{HOST}:{PORT}/msaflow_no_such_db_{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--scale",
            "0.05",
            "--storage",
            bad,
            "--eval-seeds",
            "none",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "--storage" in result.output
