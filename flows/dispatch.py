"""Running a stage's flow on a Prefect deployment (a work pool's worker, e.g. the GPU one) and waiting for it."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from flows.stage_runner import RoundContext
from infra.champion import local_checkpoint
from infra.ray_cluster import join_if_used
from infra.records import Champion
from infra.settings import FlywheelConfig
from infra.store_factory import store_from_config
from infra.tracking import Tracker


def worker_context(config: FlywheelConfig, round_index: int, champion: Champion, mlflow_run_id: str, **fields) -> RoundContext:
    """A dispatched stage's context on the worker: its own store and tracker, logging into the
    round's MLflow run, the champion fetched to this machine; ``fields``: more RoundContext fields."""
    store = store_from_config(config.storage)
    tracker = Tracker.from_config(config)
    tracker.run_id = mlflow_run_id
    join_if_used(config)
    return RoundContext(config=config, round_index=round_index, store=store, tracker=tracker, champion=champion,
                        champion_checkpoint=local_checkpoint(champion, store, config.storage.data_dir), **fields)


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
