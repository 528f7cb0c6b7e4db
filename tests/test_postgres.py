"""Optuna and MLflow on a real, throwaway PostgreSQL cluster, set up by
docker/postgres/init-databases.sh.

Needs Debian's ``postgresql`` (``initdb``/``pg_ctl`` under /usr/lib/postgresql/*/bin) and
``psycopg2`` (``pip install -e .[postgres]``); skips with the reason otherwise. Nothing is installed
by the test.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {
    "POSTGRES_PASSWORD": "pg-super-test",
    "MLFLOW_DB_PASSWORD": "mlflow-test",
    "OPTUNA_DB_PASSWORD": "optuna-test",
    "PREFECT_DB_PASSWORD": "prefect-test",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install -e '.[postgres]'")
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.skip(
            "PostgreSQL not installed (apt-get install -y postgresql): no "
            "/usr/lib/postgresql/*/bin/initdb"
        )
    if not shutil.which("psql"):
        pytest.skip("psql not on PATH (postgresql-client)")
    bindir = Path(initdbs[-1]).parent
    prefix: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="msaflow-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the `postgres` system user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user to own the cluster")
        os.chown(work, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data, log, pwfile = work / "data", work / "pg.log", work / "pw"
    pwfile.write_text(PASSWORDS["POSTGRES_PASSWORD"] + "\n")
    if prefix:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)

    def run(cmd: list[str], **kw):
        return subprocess.run(
            prefix + cmd, check=True, capture_output=True, text=True, timeout=120, **kw
        )

    try:
        run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
            ]
        )
        run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -h 127.0.0.1 -k {work}",
                "start",
            ]
        )
        env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGPASSWORD": PASSWORDS["POSTGRES_PASSWORD"],
            "POSTGRES_USER": "postgres",
            "MLFLOW_DB_USER": "mlflow",
            "OPTUNA_DB_USER": "optuna",
            "PREFECT_DB_USER": "prefect",
            **PASSWORDS,
        }
        init = subprocess.run(
            ["bash", str(ROOT / "docker/postgres/init-databases.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stderr
        # idempotent: a second run changes nothing and does not fail
        assert (
            subprocess.run(
                ["bash", str(ROOT / "docker/postgres/init-databases.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).returncode
            == 0
        )
        yield {
            "port": port,
            "url": lambda svc: (
                f"postgresql+psycopg2://{svc}:{PASSWORDS[svc.upper() + '_DB_PASSWORD']}"
                f"@127.0.0.1:{port}/{svc}"
            ),
            "work": work,
        }
    finally:
        subprocess.run(
            prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(work, ignore_errors=True)


def test_users_are_isolated(postgres):
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1",
        port=postgres["port"],
        user="optuna",
        password=PASSWORDS["OPTUNA_DB_PASSWORD"],
        dbname="optuna",
    )
    conn.close()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            host="127.0.0.1",
            port=postgres["port"],
            user="optuna",
            password=PASSWORDS["OPTUNA_DB_PASSWORD"],
            dbname="mlflow",
        ).close()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            host="127.0.0.1",
            port=postgres["port"],
            user="optuna",
            password="wrong",
            dbname="optuna",
        ).close()


def test_optuna_study_on_postgres(postgres):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = postgres["url"]("optuna")
    study = optuna.create_study(
        study_name="tiny",
        storage=url,
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(lambda t: (t.suggest_float("alpha", 0.0, 1.0) - 0.3) ** 2, n_trials=4)
    # a second "worker" joins the same study through its own storage connection
    other = optuna.load_study(study_name="tiny", storage=optuna.storages.RDBStorage(url))
    other.optimize(lambda t: (t.suggest_float("alpha", 0.0, 1.0) - 0.3) ** 2, n_trials=2)
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert len(trials) == 6 and len({t.number for t in trials}) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_mlflow_tracking_on_postgres(postgres):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(postgres["url"]("mlflow"))
    exp = client.create_experiment(
        "pg", artifact_location=(postgres["work"] / "artifacts").as_uri()
    )
    run = client.create_run(exp, run_name="child", tags={"msaflow.kind": "train"})
    client.log_metric(run.info.run_id, "valid/mae", 0.5, step=0)
    client.log_metric(run.info.run_id, "valid/mae", 0.4, step=1)
    client.set_terminated(run.info.run_id, status="FINISHED")
    again = MlflowClient(postgres["url"]("mlflow")).get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.data.metrics["valid/mae"] == 0.4
    assert [m.value for m in client.get_metric_history(run.info.run_id, "valid/mae")] == [0.5, 0.4]
