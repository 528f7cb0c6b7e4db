"""What every task shares: which failures it retries and the code version its cache keys hold.

A retry helps only with what may pass on its own (I/O hiccups, lost connections, CUDA running out
of memory beside another job); a user's mistake fails the same way every time, so it is not retried.
A cache key holds the hash of the library sources that determine a result, so a code change never
serves a result computed by older code.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from msaflow.errors import ConfigError, DataError

SOURCE_PACKAGES = ("models", "tasks", "feature_store")


@cache
def code_version() -> str:
    """Hash of the library sources that determine a result (not of flows or the CLI)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def is_transient(exc: BaseException) -> bool:
    """Retry only what may pass on its own: I/O hiccups, lost connections, CUDA out-of-memory."""
    if isinstance(
        exc,
        DataError | ConfigError | FloatingPointError | FileNotFoundError | ValueError | KeyError,
    ):
        return False
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "connection" in text or "temporarily unavailable" in text


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed run only when its error is transient."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001
        return is_transient(exc)
    return False
