"""One shared, isolated, tiny CPU setup for every test.

Everything writes under a per-session temporary MSAFLOW_HOME; MLflow gets a fresh SQLite store per
test that asks for ``mlflow_uri``; Prefect's test harness (one temporary server) opens once per
session.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="msaflow-tests-"))
os.environ["MSAFLOW_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_HOME / "prefect" / "results")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
# A temporary Prefect server per process, as before: a reused one (msaflow/prefect_server.py) would
# outlive the test that started it (tests/msaflow/test_prefect_server.py uses one in its own homes).
os.environ["MSAFLOW_PREFECT_SERVER"] = "ephemeral"

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
    from msaflow.feature_store import synthesize

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


@pytest.fixture
def train_killed_then_resumed():
    """``train_model`` killed after epoch 1 (its checkpoint written), then called again on the same
    checkpoint folder: the resumed run's result, for "resumes exactly" against an uninterrupted
    run."""
    from msaflow.tasks.train import train_model

    class Killed(Exception):
        pass

    def stop_after_second(epoch, record):
        if epoch == 1:
            raise Killed

    def run(cfg, splits, checkpoint_dir, **kwargs):
        with pytest.raises(Killed):
            train_model(
                cfg, splits, checkpoint_dir=checkpoint_dir, callbacks=[stop_after_second], **kwargs
            )
        return train_model(cfg, splits, checkpoint_dir=checkpoint_dir, **kwargs)

    return run


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


# ------------------------------------------------- hand-made MMSA and MulT pickles (ingest tests)


def mmsa_split(
    n: int, rng: np.random.Generator, aligned: bool = True, t: int = 6, start: int = 0
) -> dict:
    t_a, t_v = (t, t) if aligned else (9, 11)
    d = {
        "text": rng.standard_normal((n, t, 8)),  # float64 as MMSA ships it
        "audio": rng.standard_normal((n, t_a, 5)),
        "vision": rng.standard_normal((n, t_v, 4)),
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "id": np.array(
            [f"03bSnISJMiM$_${i}" for i in range(start, start + n)], dtype="<U16"
        ),  # unique across splits
        "raw_text": np.array([f"utterance {i}" for i in range(n)]),
        "text_bert": np.stack(
            [np.ones((n, t)), (np.arange(t)[None] < 4).repeat(n, 0), np.zeros((n, t))], 1
        ),
        "classification_labels": np.zeros(n),
    }
    if not aligned:
        d["audio_lengths"] = np.array([3 + i % 6 for i in range(n)])
        d["vision_lengths"] = np.array([2 + i % 9 for i in range(n)])
    return d


@pytest.fixture
def mmsa_pickle(tmp_path):
    def make(aligned: bool = True, mutate=None, name: str = "aligned_50.pkl"):
        rng = np.random.default_rng(0)
        data = {
            s: mmsa_split(n, rng, aligned, start=o)
            for s, n, o in (("train", 12, 0), ("valid", 5, 20), ("test", 6, 40))
        }
        if mutate:
            mutate(data)
        path = tmp_path / name
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
        return path, data

    return make


@pytest.fixture
def mult_pickle(tmp_path):
    rng = np.random.default_rng(1)
    data = {}
    for s, n, o in (
        ("train", 10, 0),
        ("valid", 4, 100),
        ("test", 5, 200),
    ):  # ids unique across splits
        data[s] = {
            "text": rng.standard_normal((n, 7, 300)).astype(np.float32),
            "audio": rng.standard_normal((n, 7, 5)).astype(np.float32),
            "vision": rng.standard_normal((n, 7, 20)).astype(np.float32),
            "labels": rng.uniform(-3, 3, (n, 1, 1)).astype(np.float32),
            "id": np.array([[f"vid{i // 3}", str(i % 3)] for i in range(o, o + n)]),
        }
    path = tmp_path / "mosi_data.pkl"
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    return path, data
