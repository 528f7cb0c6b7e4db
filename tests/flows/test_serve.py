"""Schedules, the `gpu` work pool and several Prefect workers against a real `prefect server`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from msaflow.flows.serve import (
    ENTRYPOINTS,
    ServeError,
    entrypoint_exists,
    entrypoint_file,
    parse_params,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_serve_help():
    from msaflow.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--cron", "--flow", "--param", "--setup-pool", "--deploy", "--dask-workers"):
        assert option in result.output


def test_setup_pool_needs_a_server(monkeypatch):
    from msaflow.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["serve", "--setup-pool"])
    assert result.exit_code == 2 and "PREFECT_API_URL" in result.output


def test_prefect_yaml_names_existing_entrypoints():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"pipeline-nightly", "reproduce-weekly", "tune-weekly"}
    for dep in deployments.values():
        assert dep["work_pool"]["name"] == "gpu"
        module, _, func = dep["entrypoint"].partition(":")
        assert func and not module.endswith(".py"), (
            f"module entrypoint expected: {dep['entrypoint']}"
        )
        assert all("cron" in s and s["active"] is False for s in dep["schedules"])
    assert deployments["pipeline-nightly"]["entrypoint"] == ENTRYPOINTS["pipeline"]
    assert entrypoint_exists(deployments["pipeline-nightly"]["entrypoint"]), (
        "the pipeline flow must exist"
    )
    for (
        dep
    ) in deployments.values():  # others land in parallel: present -> must define the flow function
        if entrypoint_file(dep["entrypoint"]).is_file():
            assert entrypoint_exists(dep["entrypoint"]), dep["entrypoint"]


def test_entrypoints_are_flows():
    from prefect import Flow

    from msaflow.flows.serve import load_flow

    for name, entrypoint in ENTRYPOINTS.items():
        if entrypoint_exists(entrypoint):
            assert isinstance(load_flow(name), Flow), entrypoint


def test_deploy_skips_what_no_worker_could_run(tmp_path):
    """A plain function or a flow whose required parameters are unset is reported, not deployed (no
    server is contacted for skipped entries)."""
    from msaflow.flows.serve import deploy_from_yaml

    spec = {
        "deployments": [
            {
                "name": "plain",
                "entrypoint": "msaflow.flows.serve:parse_params",
                "work_pool": {"name": "gpu"},
            },
            {
                "name": "no-table",
                "entrypoint": ENTRYPOINTS["reproduce"],
                "parameters": {},
                "work_pool": {"name": "gpu"},
            },
            {"name": "typo", "entrypoint": ENTRYPOINTS["pipeline"], "parameters": {"epoch": 3}},
            {"name": "absent", "entrypoint": "msaflow.flows.nothing_here:flow"},
        ]
    }
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec))
    report = {r["name"]: r for r in deploy_from_yaml(path=path, source=ROOT)}
    assert {r["status"] for r in report.values()} == {"skipped"}, report
    assert "not a Prefect flow" in report["plain"]["reason"]
    if entrypoint_exists(ENTRYPOINTS["reproduce"]):
        assert "table" in report["no-table"]["reason"]
    assert "epoch" in report["typo"]["reason"]
    assert "not present" in report["absent"]["reason"]


def test_parse_params():
    assert parse_params(["variants=[none, full]", "epochs=3", "data=sim-mosi", "x="]) == {
        "variants": ["none", "full"],
        "epochs": 3,
        "data": "sim-mosi",
        "x": None,
    }
    with pytest.raises(ServeError):
        parse_params(["novalue"])


def test_setup_pool_limits_the_gpu_tag_to_the_gpu_count(prefect_harness, monkeypatch):
    """``--setup-pool`` also gives the ``gpu`` tag (training tasks on CUDA) a concurrency limit of
    one per GPU, read back from the (test harness's) Prefect server; a second setup updates it.
    Two GPUs are faked: none here."""
    import contextlib

    import torch
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from msaflow.cli import app
    from msaflow.flows.serve import setup_pool

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    pool = "gpu-tag-limit-test"
    try:
        result = CliRunner().invoke(app, ["serve", "--setup-pool", "--pool", pool])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout.strip().splitlines()[-1])
        assert (info["concurrency_limit"], info["tag"], info["tag_concurrency_limit"]) == (
            2,
            "gpu",
            2,
        )
        with get_client(sync_client=True) as client:
            assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 2
        assert setup_pool(pool, concurrency=3)["tag_concurrency_limit"] == 3
        with get_client(sync_client=True) as client:
            assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 3
            assert client.read_work_pool(pool).concurrency_limit == 3
    finally:  # the harness serves the whole session: leave no limit for other tests' tasks
        with get_client(sync_client=True) as client:
            with contextlib.suppress(ObjectNotFound):
                client.delete_concurrency_limit_by_tag("gpu")
            with contextlib.suppress(ObjectNotFound):
                client.delete_work_pool(pool)


# --- a real server, two workers -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


TRIGGER = (
    """
import json, sys, time
from prefect.client.orchestration import get_client
runs = json.loads(sys.argv[1])
with get_client(sync_client=True) as c:
    dep = c.read_deployment_by_name("pipeline/pipeline-nightly")
    ids = [c.create_flow_run_from_deployment(dep.id, parameters=p).id for p in runs]
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        flow_runs = [c.read_flow_run(i) for i in ids]
        if all(r.state.is_final() for r in flow_runs):
            break
        time.sleep(2)
    print(json.dumps([{"state": r.state.type.value, "message": r.state.message,
                       "worker": r.labels.get("prefect.worker.name"), "pool": r.work_pool_name,
                       "deployment_paused": dep.paused,
                       "schedules": [[s.active, s.schedule.cron] for s in dep.schedules]} """
    """for r in flow_runs]))
"""
)


@pytest.mark.slow
def test_two_workers_share_the_gpu_pool(tiny_sim, tmp_path):
    home = tmp_path / "home"
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MSAFLOW_HOME": str(home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "results"),
    }
    procs: list[subprocess.Popen] = []
    logs = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=env,
            stdout=logs[name].open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        server = start(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        )
        _wait_http(f"http://127.0.0.1:{port}/api/health", 120, server)
        msaflow = [str(BIN / "msaflow"), "serve"]
        setup = subprocess.run(
            msaflow + ["--setup-pool", "--concurrency", "2"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert setup.returncode == 0, setup.stderr
        assert json.loads(setup.stdout.strip().splitlines()[-1])["concurrency_limit"] == 2
        deploy = subprocess.run(
            msaflow + ["--deploy"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert deploy.returncode == 0, deploy.stderr
        assert "pipeline-nightly: deployed" in deploy.stderr
        for name in ("w1", "w2"):  # --limit 1: each worker holds one run, so two runs need both
            start(
                name,
                [
                    str(BIN / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    "gpu",
                    "--name",
                    name,
                    "--limit",
                    "1",
                ],
            )
        runs = [
            {
                "data": str(tiny_sim),
                "variants": ["none"],
                "seeds": [seed],
                "epochs": 1,
                "experiment": "served",
                "tracking_uri": f"sqlite:///{tmp_path / f'mlflow-{seed}.db'}",
                "train_overrides": {"batch_size": 16},
            }
            for seed in (1, 2)
        ]
        trig = subprocess.run(
            [sys.executable, "-c", TRIGGER, json.dumps(runs), "420"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=480,
        )
        assert trig.returncode == 0, trig.stderr
        result = json.loads(trig.stdout.strip().splitlines()[-1])
        assert [r["state"] for r in result] == ["COMPLETED", "COMPLETED"], (
            result,
            logs["w1"].read_text()[-3000:],
        )
        assert {r["worker"] for r in result} == {"w1", "w2"}, result
        assert {r["pool"] for r in result} == {"gpu"}
        assert result[0]["schedules"] == [[False, "0 3 * * *"]], (
            "nightly schedule declared, inactive"
        )
    finally:
        _stop(procs)
    assert all(p.poll() is not None for p in procs)
