"""What a round shows in the Prefect UI: a markdown summary with its figures and the decision, and the
loop's history table."""

from __future__ import annotations

import base64
import re

from flows.render import as_markdown, as_records
from flows.rows import decision, figure_table, history_table, summary_rows
from flows.summary import RoundSummary
from infra.retries import call_with_retries


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def figure_markdown(title: str, png: bytes) -> str:
    """A PNG inline (data URI): the Prefect UI renders it, and it needs no file server."""
    return f"### {title}\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def round_markdown(summary: RoundSummary, figures: dict[str, bytes] | None = None) -> str:
    lines = [
        f"# {summary.loop} round {summary.round}: **{decision(summary.promoted)}**",
        "",
        f"Started from the champion of round {summary.champion_before}. Artifacts: `{summary.artifacts}`",
        "",
        as_markdown(figure_table(summary_rows(summary))),
        "",
        "## Decision",
        "",
        *(f"- {reason}" for reason in summary.reasons),
    ]
    if figures:
        lines += ["", "## Figures"] + ["\n" + figure_markdown(title, png) for title, png in figures.items()]
    return "\n".join(lines)


def publish_round(summary: RoundSummary, history: list[RoundSummary], figures: dict[str, bytes] | None = None) -> None:
    """Create the round's Prefect artifacts (shown on the flow run and under Artifacts)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    call_with_retries(
        "Prefect API: round summary artifact", create_markdown_artifact,
        key=artifact_key(f"{summary.loop}-round-summary"),
        markdown=round_markdown(summary, figures),
        description=f"{summary.loop} round {summary.round}: {'promoted' if summary.promoted else 'rejected'}",
    )
    call_with_retries(
        "Prefect API: history artifact", create_table_artifact,
        key=artifact_key(f"{summary.loop}-history"),
        table=as_records(history_table(history)),
        description=f"{summary.loop}: every round so far",
    )
