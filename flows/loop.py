"""The self-play loop: N rounds, each starting from the champion the last one left."""

from __future__ import annotations

from prefect import flow

from flows.round import run_next_round
from flows.round_records import RoundSummary
from infra.settings import FlywheelConfig
from tasks.config_checks import load_checked_config


@flow(name="flywheel-loop", flow_run_name="{config.loop}-loop")
def run_loop(config: FlywheelConfig, rounds: int = 1) -> list[RoundSummary]:
    """Run ``rounds`` more rounds of the configured loop."""
    return [run_next_round(config) for _ in range(rounds)]


@flow(name="flywheel-scheduled-loop")
def scheduled_loop(config_file: str | None = None, overrides: list[str] | None = None, rounds: int = 1) -> list[dict]:
    """Entry point of the deployments: the config is read where the flow runs (YAML file in the
    repository plus ``section.field=value`` overrides), so a schedule or CI trigger names a file."""
    from prefect.artifacts import create_markdown_artifact

    from flows.publish import artifact_key, round_markdown

    config = load_checked_config(config_file, overrides or [])
    summaries = run_loop(config=config, rounds=rounds)
    # On this run itself, so `flywheel trigger` (and CI) can read what happened.
    create_markdown_artifact(
        key=artifact_key(f"{config.loop}-run-summary"),
        markdown="\n\n".join(round_markdown(s) for s in summaries),
        description=f"{config.loop}: {rounds} round(s)",
    )
    return [s.model_dump() for s in summaries]
