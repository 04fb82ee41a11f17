"""Training as a flow of its own, so it can be deployed to a GPU work pool.

The round dispatches it with ``run_deployment`` when ``train.deployment`` is set and
waits; the worker reads the pairs from the artifact store, trains, writes the train
stage back (whole or not at all) and logs its steps into the round's MLflow run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from infra.artifacts import store_from_config
from infra.context import RoundContext
from infra.settings import FlywheelConfig
from infra.tracking import Tracker
from tasks.promote import Champion
from tasks.train import TrainResult, train_policy_task


@flow(name="flywheel-train", flow_run_name="{config.loop}-round-{round_index:03d}-train")
def train_round(config: FlywheelConfig, round_index: int, champion: Champion, pairs_key: str, mlflow_run_id: str) -> str:
    """Train the round's challenger from ``champion`` on the pairs at ``pairs_key``; returns the stage key."""
    store = store_from_config(config.storage)
    tracker = Tracker.from_config(config)
    tracker.run_id = mlflow_run_id
    ctx = RoundContext(config=config, round_index=round_index, store=store, tracker=tracker, champion_id=champion.checkpoint)
    key, result = train_policy_task(ctx, champion.local_checkpoint(store, ctx.data_dir), pairs_key)
    get_run_logger().info("trained %d pairs in %.0f s; final loss %.4f", result.n_pairs, result.runtime_s, result.final_loss)
    return key


def dispatch_training(ctx: RoundContext, champion: Champion, pairs_key: str) -> tuple[str, TrainResult]:
    """Run training on the configured deployment (e.g. a GPU work pool) and wait for it."""
    from prefect.deployments import run_deployment

    config = ctx.config
    logger = get_run_logger()
    logger.info("dispatching training to deployment %s", config.train.deployment)
    flow_run = run_deployment(
        name=config.train.deployment,
        parameters={
            "config": config.model_dump(mode="json"),
            "round_index": ctx.round_index,
            "champion": champion.model_dump(mode="json"),
            "pairs_key": pairs_key,
            "mlflow_run_id": ctx.tracker.run_id,
        },
        timeout=config.train.dispatch_timeout_s,
    )
    state = flow_run.state
    if state is None or not state.is_completed():
        status = state.name if state else "unknown"
        raise RuntimeError(
            f"training run {flow_run.name} on deployment {config.train.deployment} ended {status}"
            + (f": {state.message}" if state and state.message else "")
            + " (is a worker polling its work pool?)"
        )
    key = ctx.key("train")
    result = TrainResult.model_validate_json((ctx.store.local_path(key) / "train_result.json").read_text())
    return key, result
