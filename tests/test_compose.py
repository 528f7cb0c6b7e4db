"""Static checks of docker-compose.yml, .env.example and the Dockerfile (Docker does not run here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.fixture(scope="module")
def compose(text, env) -> dict:
    """The compose file with ${VAR} substituted from .env.example (as `--env-file .env.example` does)."""
    resolved = VAR.sub(lambda m: env.get(m.group(1), ""), text).replace("$$", "$")
    return yaml.safe_load(resolved)


def test_every_variable_is_in_env_example(text, env):
    used = set(VAR.findall(text))
    assert used, "expected ${VAR} references"
    assert not used - set(env), f"missing from .env.example: {sorted(used - set(env))}"


def test_no_secrets_in_repo(text, env):
    for line in text.splitlines():
        if re.search(r"PASSWORD\s*[:=]", line):
            assert re.search(r"PASSWORD\s*[:=]\s*\$\{\w+\}", line), f"literal password: {line.strip()}"
        for user, password in re.findall(r"://([^:/@\s]+):([^@\s]+)@", line):
            assert VAR.fullmatch(user) and VAR.fullmatch(password), f"literal credentials: {line.strip()}"
    for key, value in env.items():
        if "PASSWORD" in key:
            assert value.startswith("change-me"), f"{key} in .env.example must be a placeholder"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_services(compose):
    services = compose["services"]
    assert {"postgres", "mlflow", "prefect-server", "prefect-worker", "prefect-worker-gpu",
            "optuna-dashboard"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, f"{name} has no restart policy"


def test_ports_bind_localhost(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec!r} beyond 127.0.0.1"


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
        for dep, cond in (deps.items() if isinstance(deps, dict) else []):
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_gpu_reservation_only_in_profile(compose):
    gpu = [n for n, s in compose["services"].items()
           if (s.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")]
    assert gpu == ["prefect-worker-gpu"]
    svc = compose["services"]["prefect-worker-gpu"]
    assert "gpu" in svc.get("profiles", [])
    device = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]
    assert not compose["services"]["prefect-worker"].get("profiles"), "the CPU worker runs by default"


def test_services_wiring(compose):
    s = compose["services"]
    assert "--serve-artifacts" in s["mlflow"]["command"]
    assert any(str(c).startswith("postgresql+psycopg2://") for c in s["mlflow"]["command"])
    assert s["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert s["prefect-worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert any(str(c).startswith("postgresql+psycopg2://") for c in s["optuna-dashboard"]["command"])
    init = [v for v in s["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init and (ROOT / init[0].split(":")[0]).joinpath("init-databases.sh").is_file()


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER msaflow", text, re.M), "non-root user"
    for script in ("docker/worker-entrypoint.sh", "docker/postgres/init-databases.sh"):
        path = ROOT / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{script} must be executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_docker_compose_config():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (v1.29, Debian) not installed: apt-get install -y --no-install-recommends docker-compose")
    proc = subprocess.run([exe, "-f", "docker-compose.yml", "--env-file", ".env.example", "config", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([exe, "-f", "docker-compose.yml", "--env-file", ".env.example", "--profile", "gpu",
                           "config", "--services"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "prefect-worker-gpu" in proc.stdout.split()
