"""`flywheel report`: the loop's history as a table, and as one self-contained HTML page
with the loop's figure (win rates, constraint satisfaction, benchmark changes per round)
and each round's training figure."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from flows.summary import RoundSummary, summary_table


def loop_figure(history: list[RoundSummary]) -> bytes:
    """PNG: win rate and length-controlled win rate, constraint satisfaction, benchmark deltas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    ax = axes[0]
    ax.plot(rounds, [r.win_rate for r in history], marker="o", label="win rate")
    ax.plot(rounds, [r.lc_win_rate for r in history], marker="s", label="length-controlled")
    ax.fill_between(rounds, [r.win_rate_low if r.win_rate_low is not None else float("nan") for r in history],
                    [r.win_rate_high if r.win_rate_high is not None else float("nan") for r in history], alpha=0.2, label="95% CI")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_title("challenger vs champion")
    ax = axes[1]
    ax.plot(rounds, [r.constraint_rate_champion for r in history], marker="o", label="champion")
    ax.plot(rounds, [r.constraint_rate_challenger for r in history], marker="s", label="challenger")
    ax.set_title("held-out constraint satisfaction")
    ax = axes[2]
    tasks = sorted({t for r in history for t in r.regression_deltas})
    for task in tasks:
        ax.plot(rounds, [r.regression_deltas.get(task, float("nan")) * 100 for r in history], marker="o", label=task)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_title("benchmark change (points)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.legend(fontsize=8)
    for r in history:
        axes[0].annotate("P" if r.promoted else "x", (r.round, r.win_rate if r.win_rate is not None else 0.5),
                         textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">'


def render_html(loop: str, history: list[RoundSummary], training_pngs: dict[int, bytes]) -> str:
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
<table><tr>{header}</tr>{''.join(rows)}</table><h2>Across rounds</h2>{loop_png}<h2>Rounds</h2>{''.join(sections)}</body></html>"""


def write_report(store, loop: str, history: list[RoundSummary], out: Path) -> str:
    """Print-ready table (returned) and the HTML page written to ``out``."""
    training = {}
    for r in history:
        key = f"{loop}/round-{r.round:03d}/train"
        if store.is_complete(key) and (store.local_path(key) / "training.png").exists():
            training[r.round] = (store.local_path(key) / "training.png").read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(loop, history, training))
    return summary_table(history)
