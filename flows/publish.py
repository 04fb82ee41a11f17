"""What a round shows in the Prefect UI: a markdown summary with its figures and the decision, and the
loop's history table."""

from __future__ import annotations

import base64
import re

from flows.summary import RoundSummary


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def figure_markdown(title: str, png: bytes) -> str:
    """A PNG inline (data URI): the Prefect UI renders it, and it needs no file server."""
    return f"### {title}\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def round_markdown(summary: RoundSummary, figures: dict[str, bytes] | None = None) -> str:
    decision = "**PROMOTED**" if summary.promoted else "**rejected**"
    lines = [
        f"# {summary.loop} round {summary.round}: {decision}",
        "",
        f"Started from the champion of round {summary.champion_before}. Artifacts: `{summary.artifacts}`",
        "",
        "| figure | value |",
        "|---|---|",
        f"| pairs kept | {summary.pairs_kept} |",
    ]
    if summary.train_final_loss is not None:
        lines.append(f"| DPO loss (first → last step) | {summary.train_initial_loss:.4f} → {summary.train_final_loss:.4f} |")
        lines.append(f"| reward accuracy (last step) | {_pct(summary.train_reward_accuracy)} |")
    if summary.win_rate is not None:
        lines.append(
            f"| win rate vs champion [95% CI] | {_pct(summary.win_rate)} [{_pct(summary.win_rate_low)}, {_pct(summary.win_rate_high)}] |"
        )
        lines.append(
            f"| held-out constraint satisfaction (champion → new) | {_pct(summary.constraint_rate_champion)} → {_pct(summary.constraint_rate_challenger)} |"
        )
    for task, delta in summary.regression_deltas.items():
        lines.append(f"| {task} change | {delta * 100:+.1f} points |")
    lines += ["", "## Decision", ""] + [f"- {reason}" for reason in summary.reasons]
    if figures:
        lines += ["", "## Figures"] + ["\n" + figure_markdown(title, png) for title, png in figures.items()]
    return "\n".join(lines)


def history_rows(history: list[RoundSummary]) -> list[dict]:
    return [
        {
            "round": r.round,
            "pairs": r.pairs_kept,
            "win_rate": None if r.win_rate is None else round(r.win_rate, 3),
            "constraints_champion": None if r.constraint_rate_champion is None else round(r.constraint_rate_champion, 3),
            "constraints_new": None if r.constraint_rate_challenger is None else round(r.constraint_rate_challenger, 3),
            "regression_deltas": ", ".join(f"{k} {v * 100:+.1f}" for k, v in r.regression_deltas.items()) or "-",
            "decision": "promoted" if r.promoted else "rejected",
        }
        for r in history
    ]


def publish_round(summary: RoundSummary, history: list[RoundSummary], figures: dict[str, bytes] | None = None) -> None:
    """Create the round's Prefect artifacts (shown on the flow run and under Artifacts)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(
        key=artifact_key(f"{summary.loop}-round-summary"),
        markdown=round_markdown(summary, figures),
        description=f"{summary.loop} round {summary.round}: {'promoted' if summary.promoted else 'rejected'}",
    )
    create_table_artifact(
        key=artifact_key(f"{summary.loop}-history"),
        table=history_rows(history),
        description=f"{summary.loop}: every round so far",
    )
