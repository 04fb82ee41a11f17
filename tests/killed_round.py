"""Run ``flywheel round`` in a child process, watch its log, and SIGKILL it (with its ephemeral
Prefect server) once a condition on its log or its store holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from infra.settings import FlywheelConfig


def start_round(config: FlywheelConfig, tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    """``flywheel round`` on ``config`` in a session of its own (a kill takes its ephemeral Prefect
    server with it), with no PREFECT_ setting of this process but ``env``'s; returns it and its log."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    child_env.update(PREFECT_HOME=str(tmp_path / "prefect-child"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1", **env)
    log_path = tmp_path / "child.log"
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "flows.cli", "round", "--config", str(path)], env=child_env, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1], start_new_session=True)
    return child, log_path


def wait_for_log(child: subprocess.Popen, log_path: Path, ready: Callable[[str], bool], timeout_s: float = 600) -> None:
    """Poll ``ready(log so far)`` every 0.1 s; fails if the round ended first or never got there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None and not ready(log_path.read_text()):
        time.sleep(0.1)
    assert child.poll() is None, f"round ended before it got there:\n{log_path.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"the round never got there:\n{log_path.read_text()[-3000:]}"


def kill_session(child: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (nothing of it survives) and reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait(timeout=30)


def run_round_until(config: FlywheelConfig, tmp_path: Path, ready: Callable[[str], bool], timeout_s: float = 600) -> float:
    """Start the round, poll ``ready(log so far)`` and kill -9 the round's whole session when it
    holds; returns the time of the kill. Fails if the round ended first or never got there."""
    child, log_path = start_round(config, tmp_path)
    try:
        wait_for_log(child, log_path, ready, timeout_s)
        os.killpg(child.pid, signal.SIGKILL)
        return time.time()
    finally:
        kill_session(child)  # whoever fails
