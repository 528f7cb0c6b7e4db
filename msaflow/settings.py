"""Process-wide defaults for the stack, applied before Prefect, MLflow or transformers load.

Only defaults: a variable the user already set is never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path


def msaflow_home() -> Path:
    """Working directory for stores, caches and results (``MSAFLOW_HOME``, default
    ``./.msaflow``)."""
    return Path(os.environ.get("MSAFLOW_HOME", ".msaflow")).resolve()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{msaflow_home() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return str(msaflow_home() / "mlartifacts")


def apply_defaults() -> None:
    home = msaflow_home()
    defaults = {
        # Prefect 3.8: a temporary server unless PREFECT_API_URL is set (msaflow's commands reuse
        # one per home: msaflow/prefect_server.py); keep its state in our home.
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "results"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect" / "results"),
        # MLflow: no telemetry; quiet.
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # Nothing downloads at run time.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # OpenMP threads that spin while waiting make torch 10-20x slower whenever the cores are
        # shared (a busy lab server, parallel tasks): measured 32 ms vs 2.4 ms per batch gather
        # under load on 2 cores. Read once when torch loads, so this must run before
        # ``import torch``.
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Prefect's ephemeral server cannot create its database in a folder that does not exist yet
    # (it then waits out its whole startup timeout).
    for folder in (home, Path(os.environ["PREFECT_HOME"]).expanduser()):
        folder.mkdir(parents=True, exist_ok=True)
