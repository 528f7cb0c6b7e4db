"""The MLflow UI over a small reproduction, in Debian's headless Chromium (slow; needs chromium).

Runs mmafnet-table2 (4 cells x 2 seeds, 1 epoch) into a temporary store, serves it with
``mlflow server`` on 127.0.0.1, checks the runs through the REST API the page itself calls and in
the rendered DOM, and saves a screenshot of the runs table in the test's temporary folder.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CELLS = ("none", "sgm", "sgm_ipr", "full")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--virtual-time-budget=20000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def reproduction(tiny_sim, tmp_path_factory, prefect_harness):
    from msaflow.flows.reproduce import reproduce

    folder = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = reproduce(
        "mmafnet-table2",
        data=str(tiny_sim),
        seeds=2,
        epochs=1,
        tracking_uri=uri,
        experiment="ui-repro",
        out=str(folder / "report" / "report.md"),
    )
    assert not result["failures"]
    return {"folder": folder, "uri": uri, **result}


@pytest.fixture
def server(reproduction):
    port = _free_port()
    folder = reproduction["folder"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            reproduction["uri"],
            "--default-artifact-root",
            str(folder / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "server.log").open("w"),
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not come up: {(folder / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(1)
        yield url
    finally:  # the server and its uvicorn worker, always
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_runs_are_in_the_mlflow_ui(reproduction, server, tmp_path):
    exp_id = reproduction["experiment_id"]
    # the REST endpoint the runs page calls
    runs = _post(
        f"{server}/ajax-api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp_id], "max_results": 100},
    )["runs"]
    names = {r["info"]["run_name"] for r in runs}
    assert {f"mmafnet/{c}/seed{s}" for c in CELLS for s in (1, 2)} <= names
    parent = next(r for r in runs if r["info"]["run_id"] == reproduction["parent_run_id"])
    assert parent["info"]["run_name"] in names
    tags = {
        r["info"]["run_name"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        for r in runs
    }
    assert tags["mmafnet/sgm/seed2"]["cell"] == "sgm" and tags["mmafnet/sgm/seed2"]["seed"] == "2"

    page = f"{server}/#/experiments/{exp_id}/runs"
    shot = tmp_path / "mlflow-runs.png"
    done = _chromium(f"--screenshot={shot}", page)
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    dom = _chromium("--dump-dom", page).stdout
    assert (
        "ui-repro" in dom and parent["info"]["run_name"] in dom
    )  # children are collapsed under it
    count = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert count and int(count.group(1)) == len(runs), "the page lists every run of the experiment"

    md = Path(reproduction["report"]["markdown"]).read_text()  # the full four-cell table
    assert all(f"| {c} | 2 |" in md for c in CELLS) and "NOT CMU-MOSI" in md
