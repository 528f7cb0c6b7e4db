"""Progress lines reach the Prefect run's logs (the UI's log view), read back through Prefect's
client, and stay on stderr; outside a run they are stderr only, without Prefect's
missing-context warning."""

import asyncio
import time
import warnings

import pytest
from prefect import flow, task

from msaflow.tasks.progress import report


def _logs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=0,  # Prefect 3.8 sends None for an unset one, which its server refuses
            )

    return asyncio.run(read())


@pytest.mark.usefixtures("prefect_harness")
def test_a_task_s_progress_lands_in_its_flow_run_s_logs(capsys):
    from prefect.logging.handlers import APILogHandler

    @task
    def trains() -> str:
        from prefect.runtime import task_run

        report("[m/full/seed1] epoch 1/2 valid/mae=0.9000")
        return task_run.id

    @flow
    def watched() -> tuple[str, str]:
        from prefect.runtime import flow_run

        return flow_run.id, trains()

    flow_run_id, task_run_id = watched()
    assert "[m/full/seed1] epoch 1/2" in capsys.readouterr().err
    APILogHandler().flush()
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        found = [log for log in _logs(flow_run_id) if "epoch 1/2" in log.message]
        time.sleep(0.2)
    assert found, "no progress line in the flow run's logs"
    assert str(found[0].task_run_id) == str(task_run_id) and found[0].name == "msaflow.progress"


def test_outside_a_run_it_is_a_plain_stderr_line(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report("[extract] skipped a (read): bad")
    assert capsys.readouterr().err == "[extract] skipped a (read): bad\n"
