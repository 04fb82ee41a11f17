"""Training, here or on a GPU work pool.

``train_challenger`` is the round's one call: it trains in the round's own process, or, when
``train.deployment`` is set, runs ``train_round`` (a flow of its own) on that deployment and
waits; the worker reads the pairs from the artifact store, trains, writes the train stage back
(whole or not at all) and logs its steps into the round's MLflow run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as this_run

from flows.dispatch import run_on_deployment, worker_context
from flows.stage_runner import RoundContext, StageResult
from flows.stages import train_policy_task
from infra import layout
from infra.records import Champion
from infra.settings import FlywheelConfig
from tasks.train import TrainResult
from tasks.training.callbacks import NonFiniteLoss

NOT_TRAINED = "train_not_trained.json"  # a worker's word that its training diverged (no train stage)


def train_challenger(ctx: RoundContext, pairs: StageResult) -> tuple[StageResult | None, str | None]:
    """The round's challenger, or None and why: too few pairs were kept to train on, or the loss
    diverged (NaN or infinite), which stops training and leaves the train stage incomplete."""
    if pairs.result.n_kept < ctx.config.train.min_pairs:
        why = f"only {pairs.result.n_kept} pairs kept (< train.min_pairs = {ctx.config.train.min_pairs}): no training this round"
        get_run_logger().warning(why)
        return None, why
    if ctx.config.train.deployment:
        return dispatch_training(ctx, pairs)
    try:
        return train_policy_task(ctx, pairs), None
    except NonFiniteLoss as err:
        get_run_logger().error("%s", err)
        return None, f"no challenger: {err}"


@flow(name="flywheel-train", flow_run_name="{config.loop}-round-{round_index:03d}-train")
def train_round(config: FlywheelConfig, round_index: int, champion: Champion, pairs_key: str, mlflow_run_id: str,
                key_prefix: str = "", reference_logps_key: str = "") -> str:
    """Train the round's challenger from ``champion`` on the pairs at ``pairs_key``; returns the stage key.
    ``key_prefix`` and ``reference_logps_key``: an ablation cell's folder and shared reference log-probs."""
    from tasks.filter import FilterReport

    ctx = worker_context(config, round_index, champion, mlflow_run_id, key_prefix=key_prefix or None,
                         reference_logps_key=reference_logps_key or None)
    store, tracker = ctx.store, ctx.tracker
    report = FilterReport.model_validate_json((store.local_path(pairs_key) / layout.FILTER_REPORT).read_text())
    log = get_run_logger()
    try:
        trained = train_policy_task(ctx, StageResult(pairs_key, report))
    except NonFiniteLoss as err:
        # A diverged loss is the round's verdict, not the worker's failure: the run ends
        # Completed and tells the round why there is no challenger (the train stage stays incomplete).
        log.error("%s", err)
        store.write_json(ctx.key(NOT_TRAINED), {"flow_run_id": str(this_run.id), "reason": f"no challenger: {err}"})
        tracker.queue.flush()
        return ""
    result = trained.result
    log.info("trained %d pairs in %.0f s; final loss %.4f", result.n_pairs, result.runtime_s, result.final_loss)
    # The round's process owns the MLflow run; what this worker queued during an outage is sent now.
    if not tracker.queue.flush():
        log.warning("some training metrics could not reach MLflow yet; they wait in %s", tracker.queue.pending_dir)
    return trained.key


def dispatch_training(ctx: RoundContext, pairs: StageResult) -> tuple[StageResult | None, str | None]:
    """Run training on the configured deployment (e.g. a GPU work pool) and wait for it: the
    challenger, or None and why (the worker's loss diverged)."""
    config = ctx.config
    flow_run = run_on_deployment(
        config.train.deployment,
        {
            "config": config.model_dump(mode="json"),
            "round_index": ctx.round_index,
            "champion": ctx.champion.model_dump(mode="json"),
            "pairs_key": pairs.key,
            "mlflow_run_id": ctx.tracker.run_id,
            # An ablation cell's (sent only then: a round's parameters stay what older deployments know).
            **({"key_prefix": ctx.key_prefix, "reference_logps_key": ctx.reference_logps_key or ""} if ctx.key_prefix else {}),
        },
        config.train.dispatch_timeout_s,
        "training",
    )
    key = ctx.key(layout.TRAIN)
    if not ctx.store.is_complete(key):
        verdict = ctx.store.read_json(ctx.key(NOT_TRAINED)) or {}
        if verdict.get("flow_run_id") == str(flow_run.id):  # this run's verdict, not an earlier attempt's
            get_run_logger().error("%s", verdict["reason"])
            return None, verdict["reason"]
        raise RuntimeError(f"training run {flow_run.name} on deployment {config.train.deployment} completed "
                           f"without writing the train stage {ctx.store.uri(key)}")
    return StageResult(key, TrainResult.model_validate_json((ctx.store.local_path(key) / layout.TRAIN_RESULT).read_text())), None
