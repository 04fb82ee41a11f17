"""What a round and a comparison show in the Prefect UI: a round's markdown summary with its figures
and the decision, and the loop's history table; a comparison's figures and its telling examples."""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING

from flows.render import as_markdown, as_records
from flows.rows import comparison_rows, decision, history_table, summary_rows
from flows.table import figure_table
from infra.mlflow_links import round_links
from infra.retries import call_with_retries

if TYPE_CHECKING:
    from flows.comparison_records import Comparison
    from flows.round_records import RoundSummary
    from tasks.evaluate import Example


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def figure_markdown(title: str, png: bytes) -> str:
    """A PNG inline (data URI): the Prefect UI renders it, and it needs no file server."""
    return f"### {title}\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def round_markdown(summary: RoundSummary, figures: dict[str, bytes] | None = None, tracking_uri: str | None = None) -> str:
    """The round's summary; with ``tracking_uri``, links to its run and the runs table in MLflow's UI."""
    links = round_links(tracking_uri, [summary]) if tracking_uri else None
    lines = [
        f"# {summary.loop} round {summary.round}: **{decision(summary.promoted)}**",
        "",
        f"Started from the champion of round {summary.champion_before}. Artifacts: `{summary.artifacts}`",
        "",
        *([links.markdown(), ""] if links else []),
        as_markdown(figure_table(summary_rows(summary))),
        "",
        "## Decision",
        "",
        *(f"- {reason}" for reason in summary.reasons),
    ]
    if figures:
        lines += ["", "## Figures"] + ["\n" + figure_markdown(title, png) for title, png in figures.items()]
    return "\n".join(lines)


def publish_round(summary: RoundSummary, history: list[RoundSummary], figures: dict[str, bytes] | None = None,
                  tracking_uri: str | None = None) -> None:
    """Create the round's Prefect artifacts (shown on the flow run and under Artifacts); ``tracking_uri``:
    the MLflow the round logged to, for links to its run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    call_with_retries(
        "Prefect API: round summary artifact", create_markdown_artifact,
        key=artifact_key(f"{summary.loop}-round-summary"),
        markdown=round_markdown(summary, figures, tracking_uri),
        description=f"{summary.loop} round {summary.round}: {'promoted' if summary.promoted else 'rejected'}",
    )
    call_with_retries(
        "Prefect API: history artifact", create_table_artifact,
        key=artifact_key(f"{summary.loop}-history"),
        table=as_records(history_table(history)),
        description=f"{summary.loop}: every round so far",
    )


def comparison_markdown(c: Comparison) -> str:
    return "\n".join([
        f"# {c.loop}: round {c.challenger_round} against round {c.baseline_round}",
        "",
        f"{c.n_prompts} held-out prompts, each judged in both orders. Artifacts: `{c.artifacts}`",
        "",
        as_markdown(figure_table(comparison_rows(c))),
    ])


def examples_markdown(best: list[Example], worst: list[Example], later: int, earlier: int) -> str:
    """The telling examples side by side, as the compare stage's ``examples.md`` and the CLI print them."""
    def block(title: str, examples: list[Example]) -> list[str]:
        lines = [f"## {title}", ""]
        for e in examples:
            lines += [f"**{e.prompt}**", "",
                      f"- round {earlier} (constraints met {e.before_score:.0%}): {e.before}",
                      f"- round {later} (constraints met {e.after_score:.0%}, judged a {e.outcome}): {e.after}", ""]
        return lines

    return "\n".join(block(f"Where round {later} gained most", best) + block(f"Where round {later} lost most", worst))


def publish_comparison(comparison: Comparison) -> None:
    """Create the comparison's Prefect markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    call_with_retries(
        "Prefect API: comparison artifact", create_markdown_artifact,
        key=artifact_key(f"{comparison.loop}-compare"), markdown=comparison_markdown(comparison),
        description=f"{comparison.loop}: round {comparison.challenger_round} against round {comparison.baseline_round}",
    )
