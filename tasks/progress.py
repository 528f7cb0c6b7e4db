"""Progress lines for people watching a run: epoch progress, skipped inputs, worker results.

Each line goes to stderr, as a terminal user expects, and, inside a Prefect flow or task run, into
that run's logs, so the Prefect UI and a scheduled run's log view show the training as it goes.

Why not ``get_run_logger()`` alone: msaflow keeps ``PREFECT_LOGGING_LEVEL=WARNING`` (Prefect's own
per-task state lines drown everything else on a console), which silences every INFO record of the
``prefect.*`` loggers, the run logger's included. So progress has its own logger,
``msaflow.progress``, at INFO, whose only handler is Prefect's API handler, fed with the run
logger's context (flow and task run ids); the console line is written here, once.
"""

from __future__ import annotations

import logging
import sys
import threading

LOGGER_NAME = "msaflow.progress"
_setup_lock = threading.Lock()


def _api_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    with _setup_lock:
        if not logger.handlers:
            from prefect.logging.handlers import APILogHandler

            logger.addHandler(APILogHandler())
            logger.setLevel(logging.INFO)
            logger.propagate = False  # the console line is printed by ``report``
    return logger


def _run_extra() -> dict | None:
    """The current Prefect run's log context (ids and names), or None outside any run."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.logging import get_run_logger

        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return None
        return dict(get_run_logger().extra)
    except Exception:  # noqa: BLE001 - a progress line never breaks a run
        return None


def report(message: str, level: int = logging.INFO) -> None:
    """``message`` on stderr and, inside a Prefect run, in that run's logs."""
    print(message, file=sys.stderr, flush=True)
    extra = _run_extra()
    if extra is None:
        return
    try:
        from prefect.logging.loggers import PrefectLogAdapter

        PrefectLogAdapter(_api_logger(), extra=extra).log(level, message)
    except Exception:  # noqa: BLE001
        pass
