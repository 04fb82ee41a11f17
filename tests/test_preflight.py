"""A round whose services do not answer stops at once with what failed and what to do, not a
traceback, and before it writes anything: Prefect's temporary API given too little time to
start, and a tracking server, Prefect server and S3 endpoint that nobody serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def _round(data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "FLYWHEEL_"))}
    return subprocess.run([sys.executable, "-m", "flows.cli", "round", "--set", f"storage.data_dir={data_dir}"],
                          cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=300)


def _written(data_dir: Path) -> list[str]:
    # The Prefect home for the temporary server is all that may exist.
    return sorted(p.name for p in data_dir.iterdir() if p.name != "prefect") if data_dir.exists() else []


def test_slow_prefect_start_gives_advice_not_a_traceback(tmp_path):
    done = _round(tmp_path / "data", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "Prefect's temporary API server did not start within 1 s" in done.stderr
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120" in done.stderr and "PREFECT_API_URL" in done.stderr
    assert _written(tmp_path / "data") == []


def test_servers_that_do_not_answer_are_each_named(tmp_path):
    dead = {name: f"http://127.0.0.1:{free_port()}" for name in ("prefect", "mlflow", "s3")}
    done = _round(tmp_path / "data", PREFECT_API_URL=dead["prefect"] + "/api", MLFLOW_TRACKING_URI=dead["mlflow"],
                  AWS_ENDPOINT_URL=dead["s3"], FLYWHEEL_ARTIFACT_ROOT="s3://flywheel/artifacts",
                  AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "flywheel round: cannot start: a service does not answer"
    assert any(f"the Prefect API (PREFECT_API_URL) does not answer at {dead['prefect']}/api/health" in line for line in lines)
    assert any(f"the MLflow tracking server does not answer at {dead['mlflow']}/health" in line for line in lines)
    assert any(f"S3 does not answer at {dead['s3']}" in line for line in lines)
    assert _written(tmp_path / "data") == []


def test_a_ray_cluster_that_does_not_answer_is_named():
    import socket

    from flows.preflight import _ray_problem
    from infra.settings import FlywheelConfig
    from tests.conftest import free_port

    closed = free_port()
    config = FlywheelConfig.model_validate({"train": {"engine": "ray"}, "ray": {"address": f"127.0.0.1:{closed}"}})
    problem = _ray_problem(config)
    assert problem and f"the Ray cluster does not answer at 127.0.0.1:{closed}" in problem and "ray start --head" in problem
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert _ray_problem(config.model_copy(update={"ray": config.ray.model_copy(update={"address": f"127.0.0.1:{port}"})})) is None
    # Not used by any stage: nothing to check, whatever the address.
    assert _ray_problem(FlywheelConfig.model_validate({"ray": {"address": f"127.0.0.1:{closed}"}})) is None
