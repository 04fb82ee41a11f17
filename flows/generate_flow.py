"""Candidate generation, here or on a work pool.

``generate_challenger_candidates`` is the round's one call: it samples in the round's own process,
or, when ``generate.deployment`` is set, runs ``generate_round`` (a flow of its own, e.g. on the
GPU worker whose image has vLLM) on that deployment and waits; the worker reads the round's
prompts from the artifact store, samples from the champion and writes the generate stage back
(whole or not at all), logging its figures into the round's MLflow run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.dispatch import run_on_deployment, worker_context
from flows.stage_runner import RoundContext, StageResult
from flows.stages import generate_candidates_task
from infra import layout
from infra.records import Champion
from infra.settings import FlywheelConfig
from tasks.generate import GenerateSummary


def generate_challenger_candidates(ctx: RoundContext, prompts: StageResult) -> StageResult:
    """The round's candidates, sampled here or on ``generate.deployment``."""
    if not ctx.config.generate.deployment:
        return generate_candidates_task(ctx, prompts)
    config = ctx.config
    flow_run = run_on_deployment(
        config.generate.deployment,
        {"config": config.model_dump(mode="json"), "round_index": ctx.round_index, "champion": ctx.champion.model_dump(mode="json"),
         "prompts_key": prompts.key, "mlflow_run_id": ctx.tracker.run_id},
        config.generate.dispatch_timeout_s,
        "generation",
    )
    key = ctx.key(layout.GENERATE)
    if not ctx.store.is_complete(key):
        raise RuntimeError(f"generation run {flow_run.name} on deployment {config.generate.deployment} completed "
                           f"without writing the generate stage {ctx.store.uri(key)}")
    summary = GenerateSummary.model_validate_json((ctx.store.local_path(key) / layout.STAGE_SUMMARY).read_text())
    return StageResult(key, summary)


@flow(name="flywheel-generate", flow_run_name="{config.loop}-round-{round_index:03d}-generate")
def generate_round(config: FlywheelConfig, round_index: int, champion: Champion, prompts_key: str, mlflow_run_id: str) -> str:
    """Sample the round's candidates from ``champion`` for the prompts at ``prompts_key``; returns the stage key."""
    ctx = worker_context(config, round_index, champion, mlflow_run_id)
    tracker = ctx.tracker
    generated = generate_candidates_task(ctx, StageResult(prompts_key, None))
    get_run_logger().info("%d candidates at %.0f tokens/s", generated.result.n_candidates, generated.result.tokens_per_s)
    # The round's process owns the MLflow run; what this worker queued during an outage is sent now.
    if not tracker.queue.flush():
        get_run_logger().warning("some generation metrics could not reach MLflow yet; they wait in %s", tracker.queue.pending_dir)
    return generated.key
