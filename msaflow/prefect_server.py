"""One local Prefect API server per ``MSAFLOW_HOME``, started once and reused by later processes.

Without ``PREFECT_API_URL`` every Prefect process starts its own temporary API server: a subprocess
that imports the server and checks its database, ~10 s on a 2-core machine, which is most of a
cached ``msaflow run`` re-run. Here the first ``msaflow run``/``reproduce``/``tune`` (or
``msaflow.run`` ...) starts that same server (Prefect's ephemeral app: no UI, no scheduler
services; same database under ``PREFECT_HOME``) as a detached process and records it in
``$MSAFLOW_HOME/prefect/server.json``; later processes probe it (one HTTP request) and point
``PREFECT_API_URL`` at it for themselves and their children.

Lifecycle:

- A process using the server holds a shared ``flock`` on ``server.clients.lock`` until it exits
  (the kernel drops it, even on SIGKILL). The server retires when no process holds it and no
  request came for ``MSAFLOW_PREFECT_SERVER_IDLE_S`` seconds (default 900): it takes the lock
  exclusively, deletes its record and exits, so a server left by a killed test or a closed
  terminal goes away by itself. ``msaflow server stop`` stops it now.
- First starts are serialised by an exclusive ``flock`` on ``server.lock``: two processes never
  start two servers for one home.
- A record whose process is gone, or is not the server it names (its pid reused, another home), is
  stale: it is replaced. Nothing is ever signalled but a process of this user whose command line
  is the server's, with the record's token (through a pidfd where Linux has one, so a pid reused
  between the check and the signal is not hit). A ``server.json`` msaflow cannot have written (not
  a regular file of this user, or not a valid record) is left alone, and the process uses a
  temporary server of its own.
- Not used (the process starts its own temporary server, as before) when
  ``MSAFLOW_PREFECT_SERVER=ephemeral``, when Prefect is configured with a server
  (``PREFECT_API_URL`` in the environment, a profile, ``.env``, ``prefect.toml`` or
  ``pyproject.toml``), when Prefect is already imported in this process (a test harness or a
  notebook configured it), when the running server belongs to another Prefect version or database,
  and off POSIX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from msaflow.atomic import atomic_target
from msaflow.settings import apply_defaults, msaflow_home

MODE_ENV = "MSAFLOW_PREFECT_SERVER"  # reuse (default) | ephemeral
IDLE_ENV = "MSAFLOW_PREFECT_SERVER_IDLE_S"
DEFAULT_IDLE_S = 900.0
IDENTITY_PATH = "/msaflow-server"  # answered by the server's wrapper, not by Prefect
_MARK = "msaflow.prefect_server"  # in the server's command line, with its token
_TOKEN = re.compile(r"[0-9a-f]{16}")  # secrets.token_hex(8)
# Settings that select the server's database: a server started with others is not ours to reuse.
_DB_KEYS = ("PREFECT_HOME", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_")


class ServerError(RuntimeError):
    """msaflow's Prefect server did not come up (its log says why)."""


@dataclasses.dataclass(frozen=True)
class Record:
    """``server.json``: what a later process needs to find, trust and reuse the server."""

    pid: int
    port: int
    token: str  # in the server's argv and answered at IDENTITY_PATH
    auth: str  # the API's basic-auth "user:secret" (never in argv; the record is 0600)
    home: str
    prefect_version: str
    database: dict[str, str]
    started: float
    idle_s: float  # it retires after this long unused

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def folder(home: Path | None = None) -> Path:
    return (home or msaflow_home()) / "prefect"


def record_path(home: Path | None = None) -> Path:
    return folder(home) / "server.json"


def log_path(home: Path | None = None) -> Path:
    return folder(home) / "server.log"


def _as_record(data: Any) -> Record | None:
    """A record as ``spawn`` writes it, or None: a pid that ``kill`` would read as a process group
    (0, -1 ...) or a token that any command line contains ("") must never get as far as a signal."""
    names = {f.name for f in dataclasses.fields(Record)}
    if not isinstance(data, dict) or set(data) != names:
        return None
    ok = (
        type(data["pid"]) is int
        and data["pid"] > 1
        and type(data["port"]) is int
        and 0 < data["port"] < 65536
        and isinstance(data["token"], str)
        and _TOKEN.fullmatch(data["token"]) is not None
        and isinstance(data["auth"], str)
        and data["auth"].startswith("msaflow:")
        and isinstance(data["home"], str)
        and isinstance(data["prefect_version"], str)
        and isinstance(data["database"], dict)
        and all(isinstance(v, str) for v in data["database"].values())
        and isinstance(data["started"], int | float)
        and isinstance(data["idle_s"], int | float)
    )
    return Record(**data) if ok else None


def record_state(home: Path | None = None) -> tuple[str, Record | None]:
    """``("missing", None)``, ``("foreign", None)`` (a file msaflow cannot have written: a link,
    another user's, writable by others, not a valid record) or ``("ok", record)``."""
    import stat

    try:
        fd = os.open(record_path(home), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing", None
    except OSError:  # a symlink (ELOOP), unreadable
        return "foreign", None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or info.st_mode & 0o022  # others could have changed it: spawn writes 0600
            or info.st_size > 65536
        ):
            return "foreign", None
        try:
            rec = _as_record(json.loads(fh.read()))
        except (OSError, ValueError):
            rec = None
    return ("ok", rec) if rec is not None else ("foreign", None)


def read_record(home: Path | None = None) -> Record | None:
    """The recorded server, or None (no record, or not one msaflow wrote)."""
    return record_state(home)[1]


def _database_settings() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(_DB_KEYS)}


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _idle_s() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S


# --------------------------------------------------------------------------- who is configured


def _mentions_api_url(path: Path) -> bool:
    """Whether a Prefect settings file sets the API URL (read as text: a false positive only
    means the per-process server, as before)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if path.suffix == ".toml" and path.name != "profiles.toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return False
        if path.name == "pyproject.toml":
            data = data.get("tool", {}).get("prefect", {})
        return bool(data.get("api", {}).get("url")) or "PREFECT_API_URL" in text
    return "PREFECT_API_URL" in text


def user_configured() -> str | None:
    """Why this process must keep Prefect's own choice of server (None: nothing is configured)."""
    if os.environ.get("PREFECT_API_URL"):
        return "PREFECT_API_URL is set"
    if "prefect" in sys.modules:
        # Its settings were read at import: a variable set now would not reach them.
        return "Prefect is already imported in this process"
    prefect_home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home / "profiles.toml"))
    for path in (profiles.expanduser(), *(Path(n) for n in (".env", "prefect.toml"))):
        if _mentions_api_url(path):
            return f"{path} sets the Prefect API URL"
    if Path("pyproject.toml").is_file() and _mentions_api_url(Path("pyproject.toml")):
        return "pyproject.toml sets the Prefect API URL"
    return None


def mode() -> str:
    value = os.environ.get(MODE_ENV, "reuse").strip().lower() or "reuse"
    return value if value in ("reuse", "ephemeral") else "reuse"


# --------------------------------------------------------------------------- liveness and identity


def _argv(pid: int) -> list[str] | None:
    """The process's argv (Linux), or None where /proc does not tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and never ours (see is_ours)
    if Path("/proc").is_dir():  # a zombie (exited, not yet reaped by its parent) is gone
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def is_ours(rec: Record, home: Path) -> bool:
    """Whether the record's pid is alive and is the server it names for ``home`` (not a reused
    pid, not a record copied from another home)."""
    if rec.home != str(home) or not _alive(rec.pid):
        return False
    argv = _argv(rec.pid)
    if argv is not None:  # spawn's: [python, -P, -c, CODE, _MARK, token, fd, idle_s]
        return (
            _uid(rec.pid) == os.getuid()
            and len(argv) >= 6
            and argv[-4:-2] == [_MARK, rec.token]
            and "serve_main()" in argv[-5]
        )
    info = identity(rec)  # no /proc: ask the port
    return info is not None and info.get("pid") == rec.pid


def _signal(rec: Record, home: Path, sig: int) -> bool:
    """Send ``sig`` to the recorded server if it still is ours; False when it is not (or gone).

    The pidfd is opened before the check: if the pid is reused after it, the signal goes nowhere
    (the pidfd names the old process); if before, the check sees the new process and refuses."""
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(rec.pid)
    try:
        if not is_ours(rec, home):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(rec.pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def identity(rec: Record, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's answer at IDENTITY_PATH when it is the recorded one, else None."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=timeout)
    try:
        conn.request("GET", IDENTITY_PATH)
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"null") if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return body if isinstance(body, dict) and body.get("token") == rec.token else None


def healthy(rec: Record, timeout: float = 2.0) -> bool:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=timeout)
    try:
        conn.request("GET", "/api/health")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().strip() == b"true"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_healthy(rec: Record, timeout: float) -> None:
    """Until the server answers ``/api/health``; ServerError when it exits or times out."""
    deadline = time.monotonic() + timeout
    while not healthy(rec, timeout=max(1.0, min(10.0, deadline - time.monotonic()))):
        if not is_ours(rec, Path(rec.home)):
            raise ServerError(_failure(rec, "exited during start-up"))
        if time.monotonic() > deadline:
            raise ServerError(_failure(rec, f"was not healthy after {timeout:.0f} s"))
        time.sleep(0.1)


def _failure(rec: Record, what: str) -> str:
    log = log_path(Path(rec.home))
    with contextlib.suppress(OSError):
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        if tail:
            what += ": " + " | ".join(tail)
    return (
        f"msaflow's Prefect server (pid {rec.pid}, {rec.api_url}) {what}. Its log: {log}. "
        f"`msaflow server stop --force` stops it (the next run starts a fresh one); "
        f"{MODE_ENV}=ephemeral starts a temporary server per process instead."
    )


# --------------------------------------------------------------------------- locks


def _flock(path: Path, how: int, *, wait_s: float) -> int | None:
    """An open fd holding ``flock(how)`` on ``path``; None when not had within ``wait_s``."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def clients_lock(home: Path) -> Path:
    return folder(home) / "server.clients.lock"


def start_lock(home: Path) -> Path:
    return folder(home) / "server.lock"


_CHILDREN: list[subprocess.Popen[bytes]] = []
_LEASES: dict[Path, int] = {}  # home -> the fd holding this process's shared lock (until exit)


def _lease(home: Path, wait_s: float = 30.0) -> bool:
    """Hold the shared lock that keeps the home's server from retiring while we use it.

    A retiring server holds the lock exclusively until it is gone; then a fresh one starts."""
    import fcntl

    if home in _LEASES:
        return True
    fd = _flock(clients_lock(home), fcntl.LOCK_SH, wait_s=wait_s)
    if fd is None:
        return False
    _LEASES[home] = fd
    return True


def _drop_lease(home: Path) -> None:
    if (fd := _LEASES.pop(home, None)) is not None:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(path: Path, wait_s: float) -> Iterator[bool]:
    import fcntl

    fd = _flock(path, fcntl.LOCK_EX, wait_s=wait_s)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


# --------------------------------------------------------------------------- the client side


def write_record(home: Path, rec: Record) -> None:
    """``server.json``, replaced atomically; a fresh file, 0600 from the start (it holds the API's
    password): a leftover temporary or a link planted at its name is replaced, never written
    through."""
    with atomic_target(record_path(home)) as tmp:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(tmp, flags, 0o600), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(dataclasses.asdict(rec), indent=2) + "\n")


def spawn(home: Path) -> Record:
    """Start the server detached (its own session: a Ctrl-C of this command does not reach it)
    and record it. The listening socket is bound here and handed over, so the port is known at
    once and no other process can take it in between."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        token = secrets.token_hex(8)
        root = str(Path(__file__).resolve().parents[1])  # where this msaflow imports from
        code = f"import sys; sys.path.insert(0, {root!r}); import {_MARK} as s; s.serve_main()"
        env = {
            **os.environ,
            "MSAFLOW_HOME": str(home),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",  # what Prefect's own temporary server runs
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        # It outlives the command on a port any local user can reach: it takes basic auth.
        auth = f"msaflow:{secrets.token_urlsafe(18)}"
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
        idle_s = _idle_s()
        # -P: the home (its cwd) is not put on sys.path
        argv = [sys.executable, "-P", "-c", code, _MARK, token, str(sock.fileno()), str(idle_s)]
        log = open(log_path(home), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv,
                pass_fds=(sock.fileno(),),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=home,
                env=env,
            )
        finally:
            log.close()
    finally:
        sock.close()
    rec = Record(
        pid=proc.pid,
        port=port,
        token=token,
        auth=auth,
        home=str(home),
        prefect_version=_prefect_version(),
        database=_database_settings(),
        started=time.time(),
        idle_s=idle_s,
    )
    write_record(home, rec)
    _CHILDREN.append(proc)  # kept: a collected Popen of a running child warns; never waited on
    return rec


def connect(home: Path | None = None) -> Record | None:
    """The home's server, started if none runs; None when this process must not use one.

    Holds this process's lease on the server from here until it exits."""
    if os.name != "posix" or mode() != "reuse" or user_configured():
        return None
    home = (home or msaflow_home()).resolve()
    folder(home).mkdir(parents=True, exist_ok=True)
    if not _lease(home):
        return None
    try:
        with _exclusive(start_lock(home), wait_s=30.0) as locked:
            state, rec = record_state(home) if locked else ("locked", None)
            if state in ("locked", "foreign"):
                if state == "foreign":
                    print(
                        f"msaflow: {record_path(home)} is not a record msaflow wrote; left alone, "
                        "this process starts a temporary Prefect server of its own",
                        file=sys.stderr,
                    )
                _drop_lease(home)
                return None
            if rec is not None and is_ours(rec, home):
                if (
                    rec.prefect_version != _prefect_version()
                    or rec.database != _database_settings()
                ):
                    _drop_lease(home)  # another install's or database's: leave it alone
                    return None
                return rec
            return spawn(home)  # none, or a stale record of ours: replaced
    except BaseException:
        _drop_lease(home)
        raise


def start_prefect_early() -> Callable[[], None]:
    """Make a Prefect API server available to this process; return a function that waits for it.

    Reuse (the default, see the module's docstring): find or start the home's server and set
    ``PREFECT_API_URL`` for this process before Prefect is imported; the wait function returns
    once it is healthy, or raises ServerError. Otherwise Prefect's temporary server of this process
    starts in a background thread while the main thread imports torch and MLflow and checks the
    tracking store (~10 s here, mostly hidden); that wait never raises (the flow's own start
    reports a failure). Nothing happens when a server is configured.
    """
    try:
        rec = connect()
    except OSError:
        rec = None  # an unwritable home, no flock: the per-process server still works
    if rec is not None:
        os.environ["PREFECT_API_URL"] = rec.api_url
        os.environ["PREFECT_API_AUTH_STRING"] = rec.auth

        def ready() -> None:
            timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 90))
            wait_healthy(rec, timeout)

        return ready

    def warm() -> None:
        try:
            from prefect.settings import PREFECT_API_URL

            if PREFECT_API_URL.value():
                return
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001 - the flow's own start reports it
            pass

    thread = threading.Thread(target=warm, name="prefect-warm", daemon=True)
    thread.start()
    return thread.join


def stop(home: Path | None = None, *, force: bool = False, wait_s: float = 15.0) -> str:
    """Stop the home's server (SIGTERM: it finishes its requests; SIGKILL after ``wait_s``).
    Refuses while a process holds a lease, unless ``force``. Returns what happened, as a sentence.

    Holds the start lock throughout, so no process starts or picks up the server meanwhile."""
    import fcntl

    home = (home or msaflow_home()).resolve()
    if not folder(home).is_dir():
        return f"no Prefect server recorded for {home}"
    with _exclusive(start_lock(home), wait_s=30.0) as locked:
        if not locked:
            raise ServerError(f"another msaflow process is starting the server of {home}")
        state, rec = record_state(home)
        if state == "missing":
            return f"no Prefect server recorded for {home}"
        if rec is None:
            raise ServerError(f"{record_path(home)} is not a record msaflow wrote: left alone")
        if not is_ours(rec, home):
            record_path(home).unlink(missing_ok=True)  # ours (valid), its process long gone
            return f"removed a stale record (pid {rec.pid} is not msaflow's server)"
        fd = _flock(clients_lock(home), fcntl.LOCK_EX, wait_s=0)
        if fd is None and not force:
            raise ServerError(
                f"the Prefect server at {rec.api_url} is in use by a running msaflow process; "
                "stop that first, or pass --force"
            )
        try:
            if _signal(rec, home, signal.SIGTERM):
                deadline = time.monotonic() + wait_s
                while _alive(rec.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                _signal(rec, home, signal.SIGKILL)  # only if it is still the server
            if (now := read_record(home)) is not None and now.token == rec.token:
                record_path(home).unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
    return f"stopped the Prefect server (pid {rec.pid}, {rec.api_url})"


def status(home: Path | None = None) -> dict[str, Any]:
    """The recorded server and whether it is alive, healthy and in use (never its password)."""
    import fcntl

    home = (home or msaflow_home()).resolve()
    state, rec = record_state(home)
    if rec is None:
        return {"home": str(home), "running": False, "mode": mode(), "foreign": state == "foreign"}
    ours = is_ours(rec, home)
    in_use = None
    if ours:
        fd = _flock(clients_lock(home), fcntl.LOCK_EX, wait_s=0)
        in_use = fd is None
        if fd is not None:
            os.close(fd)
    info = {k: v for k, v in dataclasses.asdict(rec).items() if k != "auth"}
    return {
        "home": str(home),
        "mode": mode(),
        "running": ours,
        "healthy": ours and healthy(rec),
        "in_use": in_use,
        "stale": not ours,
        **info,
        "api_url": rec.api_url,
    }


# --------------------------------------------------------------------------- the server side


class _Tracked:
    """ASGI wrapper around Prefect's app: answers IDENTITY_PATH and notes the last request and
    the open connections (a flow's events websocket stays open while it runs)."""

    def __init__(self, app: Any, token: str, home: str) -> None:
        self.app, self.token, self.home = app, token, home
        self.last = time.monotonic()
        self.open = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        self.last = time.monotonic()
        if scope["type"] == "http" and scope["path"] == IDENTITY_PATH:
            body = json.dumps({"token": self.token, "home": self.home, "pid": os.getpid()})
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            return await send({"type": "http.response.body", "body": body.encode()})
        self.open += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.last = time.monotonic()


def _retire_when_idle(server: Any, app: _Tracked, home: Path, idle_s: float) -> None:
    """Ask uvicorn to exit once nothing uses the server; holds the clients' lock exclusively from
    then until the process is gone, so no new process picks up a server that is going away."""
    import fcntl

    while not server.should_exit:
        time.sleep(min(5.0, max(0.2, idle_s / 4)))
        quiet = time.monotonic() - app.last
        if app.open:
            continue
        if not folder(home).is_dir():
            # The home was deleted (a test's or a benchmark's temporary one): nobody can find
            # this server any more, and a run still using it has lost its stores anyway.
            if quiet < min(idle_s, 30.0):
                continue
        elif quiet < idle_s:
            continue
        else:
            try:
                fd = _flock(clients_lock(home), fcntl.LOCK_EX, wait_s=0)
            except OSError:
                fd = -1
            if fd is None:
                continue  # a process holds a lease
            if (rec := read_record(home)) is not None and rec.token == app.token:
                record_path(home).unlink(missing_ok=True)
        server.should_exit = True  # the lock's fd stays open until the process is gone
        time.sleep(60)
        os._exit(0)  # a shutdown that hangs must not hold the lock (and block clients) forever


def serve_main() -> None:
    """The server process: ``python -c ... msaflow.prefect_server TOKEN FD IDLE_S`` (``spawn``)."""
    import socket

    token, fd, idle_s = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    apply_defaults()
    home = msaflow_home()
    sock = socket.socket(fileno=fd)
    import uvicorn
    from prefect.server.api.server import create_app

    app = _Tracked(create_app(ephemeral=True, final=True), token, str(home))
    config = uvicorn.Config(app, lifespan="on", log_level="error", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    watchdog = threading.Thread(
        target=_retire_when_idle, args=(server, app, home, idle_s), daemon=True
    )
    watchdog.start()
    server.run(sockets=[sock])
