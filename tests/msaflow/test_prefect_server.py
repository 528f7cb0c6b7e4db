"""The local Prefect server reused per MSAFLOW_HOME (``msaflow/prefect_server.py``).

Real processes throughout: clients are fresh interpreters (Prefect must not be imported before the
choice is made), "foreign" processes are plain ``sleep``s, and the servers are real Prefect servers
(the ``slow`` tests). Every server a test starts is stopped by the ``home`` fixture, whatever
happens, and each has a short idle timeout as a second guard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from msaflow import prefect_server as ps

ROOT = Path(__file__).resolve().parents[2]

# A client: takes (or starts) the home's server, runs a trivial flow on it, says which server it
# used, then holds its lease for argv[1] seconds.
CLIENT = r"""
import json, os, sys, time
from msaflow.settings import apply_defaults; apply_defaults()
from msaflow.prefect_server import read_record, start_prefect_early
ready = start_prefect_early(); ready()
from prefect import flow

@flow
def hello() -> int:
    return 42

assert hello() == 42
rec = read_record()
print(json.dumps({"url": os.environ.get("PREFECT_API_URL"), "pid": rec and rec.pid}), flush=True)
time.sleep(float(sys.argv[1]))
"""


def _servers_of(home: Path) -> list[int]:
    """Live msaflow server processes started for ``home`` (their cwd is the home)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"serve_main" in cmd and cwd == str(home) and ps._alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def home(tmp_path):
    home = (tmp_path / "home").resolve()
    (home / "prefect").mkdir(parents=True)
    yield home
    # Whatever the test did: no server of this home outlives it.
    with contextlib.suppress(Exception):  # the loop below still ends them
        ps.stop(home, force=True)
    for pid in _servers_of(home):
        os.kill(pid, 9)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MSAFLOW_", "MLFLOW_"))
    }
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "MSAFLOW_HOME": str(home),
        "MSAFLOW_PREFECT_SERVER": "reuse",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def _client(home: Path, hold_s: float = 0.0, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(hold_s)],
        env=_env(home, **extra),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _said(proc: subprocess.Popen[str]) -> dict:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return json.loads(line)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while ps._alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not ps._alive(pid)


def _record(home: Path, pid: int, **changes) -> ps.Record:
    rec = ps.Record(
        pid=pid,
        port=9,
        token="0123456789abcdef",
        auth="msaflow:x",
        home=str(home),
        prefect_version=ps._prefect_version(),
        database={"PREFECT_HOME": str(home / "prefect")},
        started=time.time(),
        idle_s=900.0,
    )
    rec = dataclasses.replace(rec, **changes)
    ps.record_path(home).write_text(json.dumps(dataclasses.asdict(rec)))
    return rec


# ----------------------------------------------------------------------------- fast: no server


def _run_py(code: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_users_prefect_api_url_is_kept(home):
    """A server the user configured is used as is: nothing started, nothing recorded."""
    code = (
        "import os; from msaflow.settings import apply_defaults; apply_defaults()\n"
        "from msaflow.prefect_server import start_prefect_early\n"
        "start_prefect_early()()\n"
        "print(os.environ['PREFECT_API_URL'])"
    )
    env = _env(home, PREFECT_API_URL="http://127.0.0.1:9/api")
    assert _run_py(code, env, home) == "http://127.0.0.1:9/api"
    assert not ps.record_path(home).exists() and _servers_of(home) == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("prefect/profiles.toml", '[profiles.local]\nPREFECT_API_URL = "http://h:4200/api"\n'),
        (".env", "PREFECT_API_URL=http://h:4200/api\n"),
        ("prefect.toml", '[api]\nurl = "http://h:4200/api"\n'),
        ("pyproject.toml", '[tool.prefect.api]\nurl = "http://h:4200/api"\n'),
        (None, ""),  # nothing configured: msaflow's own server
    ],
)
def test_a_server_named_in_prefect_settings_files_is_respected(home, name, text):
    if name:
        (home / name).write_text(text)
    code = (
        "from msaflow.settings import apply_defaults; apply_defaults()\n"
        "from msaflow.prefect_server import user_configured; print(user_configured())"
    )
    why = _run_py(code, _env(home), home)  # cwd: where Prefect looks for .env and prefect.toml
    assert (why != "None") == bool(name), why


def test_no_reuse_when_ephemeral_or_prefect_already_imported(home, monkeypatch):
    monkeypatch.setenv("MSAFLOW_PREFECT_SERVER", "ephemeral")
    assert ps.mode() == "ephemeral" and ps.connect(home) is None
    monkeypatch.setenv("MSAFLOW_PREFECT_SERVER", "reuse")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    import prefect  # noqa: F401 - the test process's Prefect: its settings are already read

    assert ps.user_configured() == "Prefect is already imported in this process"
    assert ps.connect(home) is None and not ps.record_path(home).exists()


def test_stale_records_are_recognised_and_never_signalled(home):
    """A record naming a live process that is not msaflow's server (a reused pid), a dead pid, or
    another home's server is not ours; ``stop`` removes such a record and signals nothing."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        rec = _record(home, sleeper.pid)
        assert ps.read_record(home) == rec
        assert not ps.is_ours(rec, home)
        assert ps.status(home)["stale"] is True
        assert "stale" in ps.stop(home)
        assert sleeper.poll() is None, "a process msaflow did not start was signalled"
        assert not ps.record_path(home).exists()

        done = subprocess.Popen(["true"])
        done.wait()
        assert not ps.is_ours(_record(home, done.pid), home)
        # The live sleeper's pid, but the record was written for another home.
        assert not ps.is_ours(dataclasses.replace(rec, home="/elsewhere"), home)
    finally:
        sleeper.kill()
        sleeper.wait()
    ps.record_path(home).write_text("{not json")
    assert ps.read_record(home) is None


def test_a_process_carrying_the_mark_and_token_is_not_the_server(home):
    """The old check (mark and token anywhere in the command line) would have signalled this one:
    ``sh -c "sleep 60" msaflow.prefect_server <token>`` has both, but not the server's argv."""
    rec = _record(home, 0)  # pid filled in below
    sleeper = subprocess.Popen(["sh", "-c", "sleep 60", ps._MARK, rec.token])
    try:
        rec = _record(home, sleeper.pid)
        assert not ps.is_ours(rec, home)
        assert "stale" in ps.stop(home)
        assert sleeper.poll() is None, "a process msaflow did not start was signalled"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    "changes",
    [
        {"pid": -1},  # kill(-1, ...) would reach every process of the user
        {"pid": 0},  # ... and 0 the whole process group
        {"pid": "123"},
        {"token": ""},  # "" is in every command line
        {"token": "x" * 16},
        {"port": 70000},
        {"auth": None},
        {"extra": 1},
    ],
)
def test_a_hostile_record_is_left_alone_and_nothing_is_signalled(home, changes, monkeypatch):
    data = {**dataclasses.asdict(_record(home, os.getpid())), **changes}
    path = ps.record_path(home)
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    assert ps.record_state(home) == ("foreign", None) and ps.read_record(home) is None
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("MSAFLOW_PREFECT_SERVER", "reuse")
    monkeypatch.setattr(ps, "user_configured", lambda: None)  # this process has Prefect imported
    assert ps.connect(home) is None  # the per-process server, not a replaced record
    with pytest.raises(ps.ServerError, match="not a record msaflow wrote"):
        ps.stop(home, force=True)
    assert path.read_bytes() == before and ps.status(home)["foreign"] is True


def test_a_linked_or_foreign_owned_record_is_not_read(home, tmp_path):
    target = tmp_path / "elsewhere.json"
    rec = _record(home, os.getpid())
    target.write_text(ps.record_path(home).read_text())
    ps.record_path(home).unlink()
    ps.record_path(home).symlink_to(target)
    assert ps.record_state(home) == ("foreign", None)
    ps.record_path(home).unlink()
    ps.write_record(home, rec)
    assert ps.record_state(home) == ("ok", rec)
    ps.record_path(home).chmod(0o666)  # anyone could have rewritten it
    assert ps.record_state(home) == ("foreign", None)
    if os.getuid() == 0:  # root can hand the file to another user
        ps.record_path(home).chmod(0o600)
        os.chown(ps.record_path(home), 12345, -1)
        assert ps.record_state(home) == ("foreign", None)
    assert target.exists()


def test_the_record_is_private_and_never_written_through_a_link(home, tmp_path):
    """The record holds the API's password: 0600 from its first byte, even over a planted link at
    its temporary's name; ``status`` never shows the password."""
    from msaflow.atomic import temp_path

    victim = tmp_path / "victim"
    victim.write_text("keep")
    temp_path(ps.record_path(home)).symlink_to(victim)
    rec = _record(home, os.getpid())
    ps.write_record(home, rec)
    assert victim.read_text() == "keep"
    assert ps.record_path(home).stat().st_mode & 0o777 == 0o600
    assert ps.read_record(home) == rec
    info = ps.status(home)
    assert "auth" not in info and rec.auth not in json.dumps(info)


def test_a_server_that_does_not_come_up_is_one_error_line(home):
    """``handled_errors`` turns ServerError into one ``error:`` line and exit 1."""
    import typer
    from typer.testing import CliRunner

    from msaflow.cli import handled_errors

    cmd = typer.Typer()

    @cmd.command()
    def go() -> None:
        with handled_errors():
            ps.wait_healthy(_record(home, 2**22 + 7), timeout=1)  # no such pid: exited

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "exited during start-up" in lines[0]


# ----------------------------------------------------------------------------- slow: real servers


@pytest.mark.slow
def test_one_server_is_started_reused_and_retires_when_idle(home):
    """A stale record is replaced (its process left alone); two clients starting at once share
    one server; it takes basic auth; it outlives its idle timeout while a client holds a lease,
    then retires by itself and removes its record."""
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        _record(home, sleeper.pid)
        holder = _client(home, hold_s=10, MSAFLOW_PREFECT_SERVER_IDLE_S="3")
        other = _client(home, MSAFLOW_PREFECT_SERVER_IDLE_S="3")
        a, b = _said(holder), _said(other)
        assert other.wait(timeout=120) == 0, other.stderr.read()
        assert a == b and a["pid"] != sleeper.pid, (a, b)
        assert sleeper.poll() is None
        assert _servers_of(home) == [a["pid"]]
        rec = ps.read_record(home)
        assert rec is not None and rec.api_url == a["url"] and ps.is_ours(rec, home)
        assert ps.record_path(home).stat().st_mode & 0o777 == 0o600
        with pytest.raises(urllib.error.HTTPError) as unauthorised:
            urllib.request.urlopen(
                urllib.request.Request(f"{rec.api_url}/flow_runs/filter", data=b"{}"), timeout=10
            )
        assert unauthorised.value.code == 401
        assert ps.identity(rec) is not None and ps.healthy(rec)

        time.sleep(5)  # past the idle timeout, but `holder` still holds its lease
        assert ps._alive(rec.pid) and ps.status(home)["in_use"] is True
        assert holder.wait(timeout=60) == 0, holder.stderr.read()
        assert _wait_gone(rec.pid, timeout=60), "the idle server did not retire"
        assert not ps.record_path(home).exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_server_commands_start_status_and_stop(home):
    env = _env(home, MSAFLOW_PREFECT_SERVER_IDLE_S="120")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "msaflow.cli", "server", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    started = cli("start")
    assert started.returncode == 0, started.stderr
    info = json.loads(cli("status", "--json").stdout)
    assert info["running"] and info["healthy"] and info["in_use"] is False
    assert info["api_url"] in started.stdout

    holder = _client(home, hold_s=60, MSAFLOW_PREFECT_SERVER_IDLE_S="120")
    try:
        assert _said(holder)["pid"] == info["pid"]  # reused, not a second server
        refused = cli("stop")
        assert refused.returncode == 1 and "in use" in refused.stderr, refused.stderr
        assert ps._alive(info["pid"])
        assert cli("stop", "--force").returncode == 0
        assert _wait_gone(info["pid"], timeout=30)
        assert not ps.record_path(home).exists()
        assert "no Prefect server" in cli("status").stdout
    finally:
        holder.kill()
        holder.wait()
