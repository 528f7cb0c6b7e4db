"""Static checks of docker-compose.yml, .env.example, docker/*.sh and the Dockerfile (no Docker
engine here).

Two layers: a pure-Python reading of the compose file (YAML + compose's ${VAR} interpolation) that
always runs, and `docker-compose config` (Debian's v1.29) where the binary is installed. The
entrypoint wrappers' change-me refusal and their argv hygiene are tested by running the real scripts
with bash.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, $NAME; $$ is a literal $.
TOKEN = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|KEY", re.I)
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
BIND_DEFAULT = "${BIND_ADDRESS:-127.0.0.1}:"


class MissingVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation of every string in the parsed file (values only, as compose does)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group("dollar"):
            return "$"
        name, op, arg = m.group("name") or m.group("bare"), m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(name, arg)
            return current
        return current or ""

    return TOKEN.sub(sub, value)


def strings(value, path=()):
    """Every (path, string) in the parsed file."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, (*path, str(i)))
    elif isinstance(value, str):
        yield path, value


def references(text: str):
    """(name, op) of every variable reference in a string."""
    for m in TOKEN.finditer(text):
        if not m.group("dollar"):
            yield m.group("name") or m.group("bare"), m.group("op")


def read_env(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.fixture(scope="module")
def raw() -> dict:
    """docker-compose.yml as YAML, before interpolation (comments are gone, anchors merged)."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose(raw, env) -> dict:
    """The compose file as `docker compose --env-file .env.example` sees it."""
    return interpolate(raw, env)


@pytest.fixture(scope="module")
def required(raw) -> set[str]:
    return {name for _, s in strings(raw) for name, op in references(s) if op in (":?", "?")}


@pytest.fixture(scope="module")
def real_env(env, required) -> dict[str, str]:
    """.env.example with every required secret set to a real value."""
    return {**env, **{name: f"s3cret-{name.lower()}" for name in required}}


def published(compose) -> list[tuple[str, str]]:
    out = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            out.append(
                (
                    name,
                    port
                    if isinstance(port, str)
                    else f"{port.get('host_ip', '')}:{port.get('published')}",
                )
            )
    return out


# ---------------------------------------------------------------------------------------- structure


def test_every_variable_is_in_env_example(raw, env):
    used = {name for _, s in strings(raw) for name, _ in references(s)}
    assert used, "expected ${VAR} references"
    assert not used - set(env), f"missing from .env.example: {sorted(used - set(env))}"


def test_services(compose):
    services = compose["services"]
    assert {
        "postgres",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "prefect-worker-gpu",
        "optuna-dashboard",
    } <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, (
            f"{name} has no restart policy"
        )


def test_named_volumes_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used and used <= declared, f"undeclared volumes {used - declared}"
    assert {"pgdata", "mlartifacts"} <= used


def test_depends_on_healthy_services(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, cond in deps.items() if isinstance(deps, dict) else []:
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep}, which has no healthcheck"
                )


def test_gpu_reservation_only_in_profile(compose):
    gpu = [
        n
        for n, s in compose["services"].items()
        if (s.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")
    ]
    assert gpu == ["prefect-worker-gpu"]
    svc = compose["services"]["prefect-worker-gpu"]
    assert "gpu" in svc.get("profiles", [])
    device = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert (
        device["driver"] == "nvidia"
        and device["count"] == "all"
        and device["capabilities"] == ["gpu"]
    )
    assert not compose["services"]["prefect-worker"].get("profiles"), (
        "the CPU worker runs by default"
    )


def test_services_wiring(compose):
    s = compose["services"]
    assert s["mlflow"]["command"] == ["/app/docker/mlflow-server.sh"]
    assert s["prefect-server"]["command"] == ["/app/docker/prefect-server.sh"]
    assert s["optuna-dashboard"]["command"] == ["/app/docker/optuna-dashboard.sh"]
    assert s["prefect-worker"]["command"][0] == "/app/docker/worker-entrypoint.sh"
    assert s["postgres"]["entrypoint"] == ["bash", "/opt/msaflow-docker/postgres-entrypoint.sh"]
    assert s["postgres"]["command"] == ["postgres"], "overriding entrypoint drops the image's CMD"
    assert "./docker:/opt/msaflow-docker:ro" in s["postgres"]["volumes"]
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert s["prefect-worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    init = [v for v in s["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init and (ROOT / init[0].split(":")[0]).joinpath("init-databases.sh").is_file()
    mlflow_wrapper = (DOCKER / "mlflow-server.sh").read_text()
    assert "--serve-artifacts" in mlflow_wrapper and "MLFLOW_BACKEND_STORE_URI" in mlflow_wrapper


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER msaflow", text, re.M), "non-root user"
    assert re.search(r"^COPY .*docker \./docker", text, re.M), (
        "the image carries the entrypoint wrappers"
    )
    for path in [*DOCKER.glob("*.sh"), DOCKER / "postgres" / "init-databases.sh"]:
        assert path.stat().st_mode & 0o111, f"{path.relative_to(ROOT)} must be executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path


# ----------------------------------------------------------------------------------------- security


def test_every_port_defaults_to_loopback(raw):
    ports = [(name, p) for name, svc in raw["services"].items() for p in svc.get("ports", [])]
    assert len(ports) >= 4
    for name, port in ports:
        assert isinstance(port, str) and port.startswith(BIND_DEFAULT), (
            f"{name} publishes {port!r}: every port must start with {BIND_DEFAULT!r}"
        )


@pytest.mark.parametrize("bind", [None, ""], ids=["unset", "empty"])
def test_ports_bind_localhost_without_bind_address(real_env, raw, bind):
    env = {k: v for k, v in real_env.items() if k != "BIND_ADDRESS"}
    if bind is not None:
        env["BIND_ADDRESS"] = bind
    ports = published(interpolate(raw, env))
    assert ports and all(spec.startswith("127.0.0.1:") for _, spec in ports), ports


def test_ports_bind_localhost_with_env_example(compose):
    for name, spec in published(compose):
        assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec!r} beyond 127.0.0.1"


def test_every_secret_is_required(raw, required):
    secrets = set()
    for path, s in strings(raw):
        for name, op in references(s):
            if SECRET_NAME.search(name):
                secrets.add(name)
                assert op == ":?", (
                    f"{'.'.join(path)}: ${{{name}}} must be ${{{name}:?message}} (required)"
                )
    assert (
        {
            "POSTGRES_PASSWORD",
            "MLFLOW_DB_PASSWORD",
            "OPTUNA_DB_PASSWORD",
            "PREFECT_DB_PASSWORD",
            "PREFECT_API_AUTH_STRING",
        }
        <= secrets
        == required
    )


def test_no_secret_on_a_command_line(raw, compose):
    for name, svc in raw["services"].items():
        argv = [svc.get(key) for key in ("command", "entrypoint")] + [
            (svc.get("healthcheck") or {}).get("test")
        ]
        for _, s in strings(argv):
            assert not [n for n, _ in references(s) if SECRET_NAME.search(n)], (
                f"{name}: secret in argv {s!r}"
            )
    for path, s in strings(compose):
        assert not CREDENTIALS_IN_URL.search(s), f"{'.'.join(path)}: credentials in a URL {s!r}"


def test_no_literal_secrets(raw, env, required):
    for path, s in strings(raw):
        if SECRET_NAME.search(path[-1]) and not path[-1].endswith("_USER"):
            assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", s), (
                f"{'.'.join(path)} = {s!r} is not a required ${{VAR}}"
            )
    for key in required:
        assert "change-me" in env[key], f"{key} in .env.example must be a change-me placeholder"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize(
    "name",
    [
        "POSTGRES_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "OPTUNA_DB_PASSWORD",
        "PREFECT_DB_PASSWORD",
        "PREFECT_API_AUTH_STRING",
    ],
)
def test_missing_secret_is_refused(raw, real_env, name):
    for env in ({k: v for k, v in real_env.items() if k != name}, {**real_env, name: ""}):
        with pytest.raises(MissingVariable) as err:
            interpolate(raw, env)
        assert err.value.name == name and name in str(err.value)


# ----------------------------------------------------------------------------------- docker-compose

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason=(
        "docker-compose (v1.29, Debian) not installed: apt-get install -y --no-install-recommends "
        "docker-compose"
    ),
)


def compose_config(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    # A clean process environment: compose lets the shell override the env file.
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "--env-file", str(env_file), *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_compose
def test_docker_compose_config(env, tmp_path):
    proc = compose_config(env, tmp_path, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    proc = compose_config(env, tmp_path, "--profile", "gpu", "config", "--services")
    assert proc.returncode == 0, proc.stderr
    assert "prefect-worker-gpu" in proc.stdout.split()


@needs_compose
@pytest.mark.parametrize(
    "name",
    [
        "POSTGRES_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "OPTUNA_DB_PASSWORD",
        "PREFECT_DB_PASSWORD",
        "PREFECT_API_AUTH_STRING",
    ],
)
def test_docker_compose_refuses_missing_secret(real_env, tmp_path, name):
    proc = compose_config(
        {k: v for k, v in real_env.items() if k != name}, tmp_path, "config", "-q"
    )
    assert proc.returncode != 0
    assert f"set {name} in .env" in proc.stderr, proc.stderr


@needs_compose
def test_docker_compose_binds_localhost_by_default(real_env, required, tmp_path):
    minimal = {k: real_env[k] for k in required}  # only the secrets: everything else has a default
    proc = compose_config(minimal, tmp_path, "config")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    ports = published(resolved)
    assert len(ports) >= 4 and all(spec.startswith("127.0.0.1:") for _, spec in ports), ports
    assert not CREDENTIALS_IN_URL.search(proc.stdout)


# ----------------------------------------------------------------------------------------- wrappers

# script -> (secrets it checks, programs it ends in)
WRAPPERS = {
    "postgres-entrypoint.sh": (
        ["POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "OPTUNA_DB_PASSWORD", "PREFECT_DB_PASSWORD"],
        ["docker-entrypoint.sh"],
    ),
    "mlflow-server.sh": (["MLFLOW_DB_PASSWORD"], ["mlflow"]),
    "prefect-server.sh": (["PREFECT_DB_PASSWORD", "PREFECT_API_AUTH_STRING"], ["prefect"]),
    "optuna-dashboard.sh": (["OPTUNA_DB_PASSWORD"], ["python"]),
    "worker-entrypoint.sh": (
        ["OPTUNA_DB_PASSWORD", "PREFECT_API_AUTH_STRING"],
        ["msaflow", "prefect"],
    ),
}
STUB = (
    '#!/bin/bash\n{ printf "%s\\0" "$(basename "$0")" "$@"; printf "\\n"; } >> "$STUB_LOG/argv"\n'
    'env > "$STUB_LOG/env-$(basename "$0")"\n'
)


def run_wrapper(
    script: str, env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess, Path]:
    """Run docker/<script> with bash; the programs it would start are stubs that record argv and
    env."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    for program in ("docker-entrypoint.sh", "mlflow", "prefect", "python", "msaflow"):
        (bin_dir / program).write_text(STUB)
        (bin_dir / program).chmod(stat.S_IRWXU)
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), **env}
    proc = subprocess.run(
        ["bash", str(DOCKER / script)], env=full, capture_output=True, text=True, timeout=30
    )
    return proc, log


def secret_values(names: list[str]) -> dict[str, str]:
    # URL-hostile characters: the wrappers must percent-encode them.
    return {
        n: f"pw@{n.lower()}:/#%" if "PASSWORD" in n else f"admin:tok-{n.lower()}" for n in names
    }


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_wrapper_refuses_change_me(script, tmp_path):
    names, _ = WRAPPERS[script]
    placeholders = read_env(ROOT / ".env.example")
    proc, log = run_wrapper(script, {n: placeholders[n] for n in names}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    for n in names:
        assert f"error: {n} still holds the placeholder from .env.example" in proc.stderr
    assert "refusing to start" in proc.stderr
    assert not (log / "argv").exists(), "the service started anyway"


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_wrapper_refuses_missing_secret(script, tmp_path):
    names, _ = WRAPPERS[script]
    values = secret_values(names)
    proc, log = run_wrapper(script, {k: v for k, v in values.items() if k != names[0]}, tmp_path)
    assert proc.returncode == 2
    assert f"error: {names[0]} is not set" in proc.stderr
    assert not (log / "argv").exists()


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_wrapper_starts_with_real_secrets_and_keeps_them_off_argv(script, tmp_path):
    names, programs = WRAPPERS[script]
    values = secret_values(names)
    proc, log = run_wrapper(script, values, tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split("\0")[:-1] for line in (log / "argv").read_text().split("\n") if line]
    assert [c[0] for c in calls][-1] == programs[-1] and {c[0] for c in calls} == set(programs)
    argv = " ".join(" ".join(c) for c in calls)
    for n, v in values.items():
        assert v not in argv and n.lower() not in argv, f"{n} is on the command line: {argv}"
    assert not CREDENTIALS_IN_URL.search(argv)
    child_env = dict(
        line.split("=", 1)
        for line in (log / f"env-{programs[-1]}").read_text().splitlines()
        if "=" in line
    )
    quoted = {n: quote(v, safe="") for n, v in values.items()}
    if script == "mlflow-server.sh":
        assert (
            child_env["MLFLOW_BACKEND_STORE_URI"]
            == f"postgresql+psycopg2://mlflow:{quoted['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow"
        )
        assert "MLFLOW_DB_PASSWORD" not in child_env and "--serve-artifacts" in argv
    elif script == "prefect-server.sh":
        assert (
            child_env["PREFECT_API_DATABASE_CONNECTION_URL"]
            == f"postgresql+asyncpg://prefect:{quoted['PREFECT_DB_PASSWORD']}@postgres:5432/prefect"
        )
        assert child_env["PREFECT_SERVER_API_AUTH_STRING"] == values["PREFECT_API_AUTH_STRING"]
    elif script in ("optuna-dashboard.sh", "worker-entrypoint.sh"):
        assert (
            child_env["OPTUNA_STORAGE"]
            == f"postgresql+psycopg2://optuna:{quoted['OPTUNA_DB_PASSWORD']}@postgres:5432/optuna"
        )
        assert "OPTUNA_DB_PASSWORD" not in child_env


def test_secrets_script_alone(tmp_path):
    script = str(DOCKER / "secrets.sh")
    ok = subprocess.run(
        ["bash", script, "A"], env={"A": "a-real-one"}, capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stderr == ""
    for bad in ("change-me", "CHANGE-ME-zq7", "zq7-change-me"):
        proc = subprocess.run(["bash", script, "A"], env={"A": bad}, capture_output=True, text=True)
        assert proc.returncode == 2 and "error: A still holds the placeholder" in proc.stderr
        assert len(proc.stderr.splitlines()) == 2 and "zq7" not in proc.stderr, (
            "never echo the value"
        )


def test_dashboard_server_needs_storage_from_environment(tmp_path):
    """The dashboard's storage URL comes from $OPTUNA_STORAGE only; it takes no URL argument."""
    script = str(DOCKER / "optuna_dashboard_server.py")
    proc = subprocess.run(
        [sys.executable, script],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "error: OPTUNA_STORAGE is not set" in proc.stderr
    proc = subprocess.run(
        [sys.executable, script, "postgresql://u:p@h/db"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_env_example_is_refused_unedited(env, required):
    proc = subprocess.run(
        ["bash", str(DOCKER / "secrets.sh"), *sorted(required)],
        env={k: env[k] for k in required},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert all(f"error: {n} still holds the placeholder" in proc.stderr for n in required)


# --------------------------------------------------------------------------------------------- docs


def test_docs_never_expose_dask_or_services_unprotected():
    for path in (
        ROOT / "docs" / "scale-out.md",
        ROOT / "docker-compose.yml",
        ROOT / ".env.example",
    ):
        for line in path.read_text().splitlines():
            if re.search(r"dask[- ]scheduler", line) and "0.0.0.0" in line:
                pytest.fail(f"{path.name}: dask scheduler on 0.0.0.0: {line.strip()}")
            if "dask scheduler" in line and line.lstrip().startswith("dask scheduler"):
                assert "--tls-" in line or "127.0.0.1" in line, (
                    f"{path.name}: unprotected scheduler: {line}"
                )
    doc = (ROOT / "docs" / "scale-out.md").read_text()
    assert re.search(r"ssh (-N )?-L \d+:127\.0\.0\.1:\d+", doc) and "reverse proxy" in doc
    assert "--tls-ca-file" in doc and "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION" in doc
    assert "PREFECT_API_AUTH_STRING" in doc
