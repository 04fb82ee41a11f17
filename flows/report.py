"""`flywheel report`: the loop's history as a table, and as one self-contained HTML page
with the loop's figure (win rates, constraint satisfaction, benchmark changes per round)
and each round's training figure."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from flows.summary import RoundSummary, summary_table
from tasks.figures import loop_figure


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">'


def comparisons_html(comparisons: list) -> str:
    """`flywheel compare` results: what the rounds added up to against an earlier policy."""
    if not comparisons:
        return ""
    header = "".join(f"<th>{h}</th>" for h in ("policy", "against", "prompts", "win rate [95% CI]", "W/T/L", "LC win rate",
                                               "constraints met", "all constraints met", "mean words", "failure modes", "benchmark Δ (points)"))
    rows = []
    for c in comparisons:
        r = c.result
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            f"round {c.challenger_round}", f"round {c.baseline_round}", c.n_prompts,
            f"{r.win_rate:.3f} [{r.win_rate_low:.3f}, {r.win_rate_high:.3f}]", f"{r.wins}/{r.ties}/{r.losses}",
            f"{r.lc_win_rate:.3f}", f"{r.champion_constraint_rate:.3f} → {r.challenger_constraint_rate:.3f}",
            f"{r.champion_strict_rate:.3f} → {r.challenger_strict_rate:.3f}",
            f"{r.champion_mean_words:.0f} → {r.challenger_mean_words:.0f}",
            f"{r.champion_failure_rates.get('any', float('nan')):.3f} → {r.challenger_failure_rates.get('any', float('nan')):.3f}",
            " ".join(f"{t.task} {t.delta * 100:+.1f}{'' if t.passed else ' (beyond the gate)'}" for t in c.regression.tasks)
            if c.regression else "-",
        )) + "</tr>")
    return f"<h2>Against earlier policies (flywheel compare)</h2><table><tr>{header}</tr>{''.join(rows)}</table>"


def render_html(loop: str, history: list[RoundSummary], training_pngs: dict[int, bytes], comparisons: list | None = None) -> str:
    rows = []
    for r in history:
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r.round, r.pairs_kept,
                "-" if r.train_final_loss is None else f"{r.train_initial_loss:.3f} → {r.train_final_loss:.3f}",
                "-" if r.train_reward_accuracy is None else f"{r.train_reward_accuracy:.2f}",
                "-" if r.win_rate is None else f"{r.win_rate:.3f} [{r.win_rate_low:.3f}, {r.win_rate_high:.3f}]",
                "-" if r.lc_win_rate is None else f"{r.lc_win_rate:.3f}",
                "-" if r.constraint_rate_challenger is None else f"{r.constraint_rate_champion:.3f} → {r.constraint_rate_challenger:.3f}",
                " ".join(f"{k} {v * 100:+.1f}" for k, v in r.regression_deltas.items()) or "-",
                ", ".join(r.alarms) or "-",
                "PROMOTED" if r.promoted else "rejected",
            )) + "</tr>"
        )
    sections = []
    for r in history:
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in r.reasons)
        figure = _img(training_pngs[r.round], f"round {r.round} training") if r.round in training_pngs else ""
        sections.append(f"<h3>Round {r.round}: {'promoted' if r.promoted else 'rejected'}</h3><ul>{reasons}</ul>{figure}")
    header = "".join(f"<th>{h}</th>" for h in ("round", "pairs", "loss", "reward acc.", "win rate [95% CI]", "LC win rate",
                                               "constraints champion → new", "benchmark Δ (points)", "alarms", "decision"))
    loop_png = _img(loop_figure(history), "loop figure") if history else "<p>No rounds yet.</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel: {html.escape(loop)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Flywheel loop <code>{html.escape(loop)}</code></h1>
<table><tr>{header}</tr>{''.join(rows)}</table>{comparisons_html(comparisons or [])}<h2>Across rounds</h2>{loop_png}<h2>Rounds</h2>{''.join(sections)}</body></html>"""


def write_report(store, loop: str, history: list[RoundSummary], out: Path) -> str:
    """Print-ready table (returned) and the HTML page written to ``out``."""
    training = {}
    for r in history:
        key = f"{loop}/round-{r.round:03d}/train"
        if store.is_complete(key) and (store.local_path(key) / "training.png").exists():
            training[r.round] = (store.local_path(key) / "training.png").read_bytes()
    from flows.compare import read_comparisons

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(loop, history, training, read_comparisons(store, loop)))
    return summary_table(history)
