"""User errors inside flows: one ``error:`` line from the CLI, no Prefect traceback.

Everything a user supplies is checked before a flow starts (``check_data`` and the flows'
``check_*_inputs``). What can only fail inside a flow (a store whose files do not match its
manifest, a pickle that is not a dataset) raises the same error classes there. Prefect 3.8 logs
every exception that leaves a task or flow with its traceback ("Task run failed with exception",
"Encountered exception during execution") and a task's "Finished in state Failed(...)" line; for
a user error that is 40-110 lines a user reads as a crash, above the one line that says what to fix.

``quiet_user_errors`` installs a filter on Prefect's flow-run and task-run loggers that drops
exactly those records when the exception is a user error. Bugs keep their tracebacks, and the
failed state (Prefect UI, API) still carries the message.
"""

from __future__ import annotations

import logging

from msaflow.feature_store import DataError
from msaflow.tasks.config import ConfigError
from msaflow.tasks.tracking import TrackingError

USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError, TrackingError)
_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def is_user_error(exc: BaseException | None) -> bool:
    return isinstance(exc, USER_ERRORS)


class QuietUserErrors(logging.Filter):
    """Drop Prefect's traceback and failed-state records of a user error (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not is_user_error(exc)
        if record.levelno >= logging.ERROR:
            # A task's "Finished in state Failed('Task run encountered an exception DataError:
            # ...')": the record holds only the text.
            text = record.getMessage()
            if "Finished in state Failed" in text and any(
                f"exception {cls.__name__}:" in text for cls in USER_ERRORS
            ):
                return False
        return True


_FILTER = QuietUserErrors()


def quiet_user_errors() -> None:
    """Install the filter once per process (idempotent; Prefect's dictConfig keeps logger
    filters)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
