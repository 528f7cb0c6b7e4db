"""One shared, isolated, tiny CPU setup for every test.

Everything writes under a per-session temporary MSAFLOW_HOME; MLflow gets a fresh SQLite store per
test that asks for ``mlflow_uri``; Prefect's test harness (one temporary server) opens once per
session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="msaflow-tests-"))
os.environ["MSAFLOW_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_HOME / "prefect" / "results")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

from msaflow.settings import apply_defaults  # noqa: E402

apply_defaults()

import torch  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def msaflow_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> Path:
    """A small sim-mosi store (about 5% of MOSI), built once per session."""
    from feature_store import synthesize

    out = tmp_path_factory.mktemp("stores") / "sim-mosi-tiny"
    synthesize("mosi", out, seed=0, scale=0.05)
    return out


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mosi_label_csv() -> Path:
    path = SHARED_DATA / "mosi_label.csv"
    if not path.is_file():
        pytest.skip(f"real MOSI labels not present at {path}")
    return path
