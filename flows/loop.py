"""The self-play loop: N rounds, each starting from the champion the last one left."""

from __future__ import annotations

from prefect import flow

from flows.round import next_round_index, round_run_name, run_round
from flows.summary import RoundSummary
from infra.artifacts import open_store
from infra.settings import FlywheelConfig


@flow(name="flywheel-loop", log_prints=True)
def run_loop(config: FlywheelConfig, rounds: int = 1) -> list[RoundSummary]:
    """Run ``rounds`` more rounds of the configured loop."""
    store = open_store(config.storage.resolved_artifact_root())
    summaries = []
    for _ in range(rounds):
        index = next_round_index(store, config.loop)
        round_flow = run_round.with_options(flow_run_name=round_run_name(config.loop, index))
        summaries.append(round_flow(config=config, round_index=index))
    return summaries
