"""`flywheel report`: the loop's history as a table, and as one self-contained HTML page
with the loop's figure (win rates, constraint satisfaction, benchmark changes per round)
and each round's training figure, linking the runs table and each round's run in MLflow's UI."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from flows.render import as_html, summary_table
from flows.rows import comparisons_table, history_table
from infra import layout
from tasks.figures import loop_figure

if TYPE_CHECKING:
    from flows.comparison_records import Comparison
    from flows.round_records import RoundSummary
    from infra.mlflow_links import MlflowLinks


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">'


def comparisons_html(comparisons: list[Comparison]) -> str:
    """`flywheel compare` results: what the rounds added up to against an earlier policy."""
    if not comparisons:
        return ""
    return f"<h2>Against earlier policies (flywheel compare)</h2>{as_html(comparisons_table(comparisons))}"


def mlflow_html(links: MlflowLinks | None) -> str:
    """Where the rounds are in MLflow's UI (the runs table; each round links its own run)."""
    if links is None:
        return ""
    serve = f" (serve the UI first: <code>{html.escape(links.serve)}</code>)" if links.serve else ""
    return f'<p>MLflow: <a href="{html.escape(links.runs_table)}">runs table</a>{serve}</p>'


def _run_link(links: MlflowLinks | None, round_index: int) -> str:
    url = links.runs.get(f"round {round_index}") if links else None
    return f' <small><a href="{html.escape(url)}">MLflow run</a></small>' if url else ""


def render_html(
    loop: str, history: list[RoundSummary], training_pngs: dict[int, bytes], comparisons: list[Comparison] | None = None,
    links: MlflowLinks | None = None,
) -> str:
    sections = []
    for r in history:
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in r.reasons)
        figure = _img(training_pngs[r.round], f"round {r.round} training") if r.round in training_pngs else ""
        heading = f"Round {r.round}: {'promoted' if r.promoted else 'rejected'}{_run_link(links, r.round)}"
        sections.append(f"<h3>{heading}</h3><ul>{reasons}</ul>{figure}")
    table = as_html(history_table(history)) if history else ""
    loop_png = _img(loop_figure(history), "loop figure") if history else "<p>No rounds yet.</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel: {html.escape(loop)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Flywheel loop <code>{html.escape(loop)}</code></h1>
{table}{mlflow_html(links)}{comparisons_html(comparisons or [])}<h2>Across rounds</h2>{loop_png}<h2>Rounds</h2>{''.join(sections)}</body></html>"""


def write_report(store, loop: str, history: list[RoundSummary], out: Path, links: MlflowLinks | None = None) -> str:
    """Print-ready table (returned) and the HTML page written to ``out``; ``links``: the rounds' runs
    in MLflow's UI (infra/mlflow_links.py's ``round_links``)."""
    training = {}
    for r in history:
        key = layout.stage_key(loop, r.round, layout.TRAIN)
        if store.is_complete(key) and (store.local_path(key) / layout.TRAINING_FIGURE).exists():
            training[r.round] = (store.local_path(key) / layout.TRAINING_FIGURE).read_bytes()
    from flows.comparison_records import read_comparisons  # here: its records load tasks.evaluate, and torch with it

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(loop, history, training, read_comparisons(store, loop), links))
    return summary_table(history)
