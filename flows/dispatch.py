"""Running a stage's flow on a Prefect deployment (a work pool's worker, e.g. the GPU one) and waiting for it."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger


def run_on_deployment(deployment: str, parameters: dict[str, Any], timeout_s: float, what: str):
    """Run ``deployment`` with ``parameters``, wait up to ``timeout_s``; the finished flow run.
    Raises RuntimeError naming the run and its state unless it completed."""
    from prefect.deployments import run_deployment

    get_run_logger().info("dispatching %s to deployment %s", what, deployment)
    # Not wrapped in our retries: a retry after the run was created would start the work twice.
    # Prefect's client already resends requests that fail on the wire.
    flow_run = run_deployment(name=deployment, parameters=parameters, timeout=timeout_s)
    state = flow_run.state
    if state is None or not state.is_completed():
        status = state.name if state else "unknown"
        raise RuntimeError(
            f"{what} run {flow_run.name} on deployment {deployment} ended {status}"
            + (f": {state.message}" if state and state.message else "")
            + " (is a worker polling its work pool?)"
        )
    return flow_run
