"""Run ``flywheel round`` in a child process and SIGKILL it (with its ephemeral Prefect server)
once a condition on its log or its store holds."""

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


def run_round_until(config: FlywheelConfig, tmp_path: Path, ready: Callable[[str], bool], timeout_s: float = 600) -> float:
    """Start the round, poll ``ready(log so far)`` and kill -9 the round's whole session when it
    holds; returns the time of the kill. Fails if the round ended first or never got there."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-child"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "child.log"
    log = open(log_path, "w")
    # A session of its own, so the kill takes the child's ephemeral Prefect server with it.
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", "round", "--config", str(path)], env=env, stdout=log,
                             stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1], start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and child.poll() is None and not ready(log_path.read_text()):
            time.sleep(0.1)
        assert child.poll() is None, f"round ended before it could be killed:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the round never got where it was to be killed:\n{log_path.read_text()[-3000:]}"
        os.killpg(child.pid, signal.SIGKILL)
        killed_at = time.time()
        child.wait(timeout=30)
        return killed_at
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whoever fails: nothing of the child survives
        except ProcessLookupError:
            pass
        child.wait(timeout=30)
        log.close()
