"""Pictures: a round's DPO training curves and the loop's figures across rounds (matplotlib, PNG, no display)."""

from __future__ import annotations

import io
import math
from pathlib import Path


def training_figure(log_history: list[dict], path: Path, title: str = "", expected_loss: float | None = math.log(2)) -> Path:
    """Loss against where it should start (``expected_loss``: ln 2 for sigmoid DPO; None: not
    known), reward margin, chosen and rejected rewards, reward accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in log_history if "loss" in h and "rewards/margins" in h]
    x = [h.get("step", i + 1) for i, h in enumerate(steps)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [
        ("loss", [("loss", "loss")], expected_loss, "expected start" if expected_loss is not None else None),
        ("reward margin", [("rewards/margins", "chosen - rejected")], 0.0, None),
        ("implicit rewards", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")], 0.0, None),
        ("reward accuracy", [("rewards/accuracies", "accuracy")], 0.5, "chance"),
    ]
    for ax, (name, series, ref, ref_label) in zip(axes, panels):
        for key, label in series:
            ax.plot(x, [h.get(key, math.nan) for h in steps], marker="o", markersize=3, label=label)
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle="--", linewidth=1, label=ref_label)
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(series) > 1 or ref_label:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loop_figure(history: list) -> bytes:
    """PNG of RoundSummary records: win rate and length-controlled win rate, constraint satisfaction, benchmark deltas."""
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
        if ax.get_legend_handles_labels()[0]:  # a round without benchmarks has nothing to label
            ax.legend(fontsize=8)
    for r in history:
        axes[0].annotate("P" if r.promoted else "x", (r.round, r.win_rate if r.win_rate is not None else 0.5),
                         textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
