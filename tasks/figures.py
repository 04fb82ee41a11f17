"""Pictures of a round: the DPO training curves (matplotlib, written as PNG, no display)."""

from __future__ import annotations

import math
from pathlib import Path


def training_figure(log_history: list[dict], path: Path, title: str = "") -> Path:
    """Loss against ln 2, reward margin, chosen and rejected rewards, reward accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in log_history if "loss" in h and "rewards/margins" in h]
    x = [h.get("step", i + 1) for i, h in enumerate(steps)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [
        ("DPO loss", [("loss", "loss")], math.log(2), "ln 2 (reference = policy)"),
        ("reward margin", [("rewards/margins", "chosen - rejected")], 0.0, None),
        ("implicit rewards", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")], 0.0, None),
        ("reward accuracy", [("rewards/accuracies", "accuracy")], 0.5, "chance"),
    ]
    for ax, (name, series, ref, ref_label) in zip(axes, panels):
        for key, label in series:
            ax.plot(x, [h[key] for h in steps], marker="o", markersize=3, label=label)
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
