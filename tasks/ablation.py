"""The ablation's cells and what is read off them: which objective, LoRA rank and beta, judged on
held-out evidence rather than training loss (the DPO-vs-SimPO article's method).

A cell is one (objective, rank, beta) trained on one finished round's pairs and evaluated on that
round's held-out prompts against that round's champion. Per cell: the training and held-out
margins (per epoch, and at the epoch kept), the pairwise eval's win rate with its interval,
length-controlled win rate, constraint satisfaction, failure modes, length, optional benchmark
deltas, time. ``recommend`` picks the cell to adopt; ``ablation_figure`` draws the margins.
"""

from __future__ import annotations

import io
import math
from typing import Literal

from pydantic import BaseModel

from infra.settings import TrainConfig
from tasks.training.objectives import OBJECTIVES

# A log-ratio this small (nats per response, on the held-out pairs) means the policy barely moved.
BARELY_MOVES = 0.05
# Answers shorter than this share of the champion's mean: length collapse.
LENGTH_COLLAPSE = 0.5


class AblationCell(BaseModel):
    objective: str
    lora_r: int
    beta: float | None = None  # None: the objective's configured beta (train.beta, train.simpo.beta, train.orpo.weight)

    @property
    def name(self) -> str:
        beta = "default" if self.beta is None else f"{self.beta:g}"
        return f"{self.objective}-r{self.lora_r}-beta{beta}"

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this cell's objective, rank (LoRA alpha scaled to keep alpha / r) and beta."""
        alpha = max(1, round(base.lora_alpha * self.lora_r / base.lora_r))
        config = base.model_copy(update={"objective": [self.objective], "lora_r": self.lora_r, "lora_alpha": alpha})
        return OBJECTIVES.get(self.objective)().with_beta(config, self.beta) if self.beta is not None else config


def matrix(objectives: list[str], ranks: list[int], betas: list[float | None]) -> list[AblationCell]:
    """Every (objective, rank, beta), in that order, reference objectives first (they share one
    reference pass, which the first of them computes)."""
    cells = [AblationCell(objective=o, lora_r=r, beta=b) for o in objectives for r in ranks for b in betas]
    return sorted(cells, key=lambda c: not OBJECTIVES.get(c.objective).uses_reference)


class EpochMargins(BaseModel):
    epoch: float
    train_margin: float  # mean over the epoch's steps
    heldout_margin: float | None  # scored at the epoch's end


class CellResult(BaseModel):
    cell: AblationCell
    status: Literal["done", "failed"]
    error: str = ""
    identity: str = ""  # what the cell was computed from (a rerun skips a cell done with the same)
    mlflow_run_id: str = ""
    artifacts: str = ""
    beta: float | None = None  # the beta (or lambda) actually used
    train_margin: float | None = None
    train_accuracy: float | None = None
    heldout_margin: float | None = None
    heldout_accuracy: float | None = None
    heldout_margin_gain: float | None = None  # over the margin before training
    train_margin_gain: float | None = None
    epochs: list[EpochMargins] = []
    step_margins: list[tuple[float, float]] = []  # (epoch, training margin) of every logged step
    mean_logratio: float | None = None  # held-out pairs, chosen and rejected, to the reference (nats)
    kl_to_start: float | None = None  # KL(policy || the champion it trained from) on its samples, nats per answer (sweeps)
    win_rate: float | None = None
    win_rate_low: float | None = None
    win_rate_high: float | None = None
    lc_win_rate: float | None = None
    constraint_rate: float | None = None
    champion_constraint_rate: float | None = None
    failure_rate: float | None = None  # share of held-out answers showing any failure mode
    champion_failure_rate: float | None = None
    mean_words: float | None = None
    champion_mean_words: float | None = None
    benchmark_deltas: dict[str, float] = {}
    alarms: list[str] = []
    train_seconds: float | None = None
    pairs_per_s: float | None = None

    @property
    def tracks(self) -> bool:
        """The held-out margin rose with the training margin (no over_optimization alarm)."""
        return "over_optimization" not in self.alarms

    def degeneration(self) -> list[str]:
        """How the policy degenerated, if it did: failure modes up, length collapsed."""
        signs = []
        if self.failure_rate is not None and self.champion_failure_rate is not None and self.failure_rate > self.champion_failure_rate + 0.05:
            signs.append(f"failure modes {self.champion_failure_rate:.0%} -> {self.failure_rate:.0%}")
        if self.mean_words and self.champion_mean_words and self.mean_words < LENGTH_COLLAPSE * self.champion_mean_words:
            signs.append(f"length collapsed {self.champion_mean_words:.0f} -> {self.mean_words:.0f} words")
        return signs


def _finite(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def epoch_margins(log_history: list[dict]) -> list[EpochMargins]:
    """Per epoch: the training margin (mean of its steps) and the held-out margin at its end."""
    steps = [h for h in log_history if "rewards/margins" in h and "loss" in h]
    evals = [h for h in log_history if "eval_rewards/margins" in h]
    out, done = [], 0.0
    for e in evals:
        inside = [h["rewards/margins"] for h in steps if done < h.get("epoch", 0) <= e["epoch"] + 1e-9]
        out.append(EpochMargins(epoch=e["epoch"], train_margin=sum(inside) / len(inside) if inside else math.nan,
                                heldout_margin=e["eval_rewards/margins"]))
        done = e["epoch"]
    if not evals and steps:
        out.append(EpochMargins(epoch=steps[-1].get("epoch", 1.0), heldout_margin=None,
                                train_margin=sum(h["rewards/margins"] for h in steps) / len(steps)))
    return out


def cell_figures(cell: AblationCell, train, pairwise, regression=None) -> CellResult:
    """A finished cell's row from its TrainResult, PairwiseResult and (optional) RegressionResult."""
    history = train.log_history
    kept = [h for h in history if "eval_rewards/margins" in h]
    if train.best_epoch is not None:
        kept = [h for h in kept if h.get("epoch") == train.best_epoch] or kept
    steps = [h for h in history if "loss" in h and "rewards/margins" in h]
    late = steps[len(steps) // 2:]
    mean = lambda key, rows: _finite(sum(h.get(key, math.nan) for h in rows) / len(rows)) if rows else None  # noqa: E731
    heldout = kept[-1] if kept else {}
    logratio = None
    if train.reference != "none" and "eval_rewards/chosen" in heldout and train.beta:
        logratio = (heldout["eval_rewards/chosen"] + heldout["eval_rewards/rejected"]) / (2 * train.beta)
    train_margin, heldout_margin = mean("rewards/margins", late), _finite(heldout.get("eval_rewards/margins"))
    return CellResult(
        cell=cell, status="done", beta=train.beta,
        train_margin=train_margin, train_accuracy=mean("rewards/accuracies", late),
        heldout_margin=heldout_margin, heldout_accuracy=_finite(heldout.get("eval_rewards/accuracies")),
        train_margin_gain=train_margin - train.start.train_margin if train_margin is not None else None,
        heldout_margin_gain=heldout_margin - train.start.heldout_margin if heldout_margin is not None else None,
        epochs=epoch_margins(history), mean_logratio=logratio,
        step_margins=[(h.get("epoch", 0.0), h["rewards/margins"]) for h in steps if math.isfinite(h["rewards/margins"])],
        win_rate=pairwise.win_rate, win_rate_low=pairwise.win_rate_low, win_rate_high=pairwise.win_rate_high,
        lc_win_rate=_finite(pairwise.lc_win_rate),
        constraint_rate=pairwise.challenger_constraint_rate, champion_constraint_rate=pairwise.champion_constraint_rate,
        failure_rate=pairwise.challenger_failure_rates.get("any"), champion_failure_rate=pairwise.champion_failure_rates.get("any"),
        mean_words=_finite(pairwise.challenger_mean_words), champion_mean_words=_finite(pairwise.champion_mean_words),
        benchmark_deltas={t.task: t.delta for t in regression.tasks} if regression else {},
        alarms=[a.name for a in train.alarms], train_seconds=train.runtime_s, pairs_per_s=_finite(train.pairs_per_s),
    )


class Recommendation(BaseModel):
    cell: AblationCell | None  # the cell whose settings to adopt; None: no change
    reasons: list[str]

    @property
    def change(self) -> bool:
        return self.cell is not None


def _overlap(a: CellResult, b: CellResult) -> bool:
    return a.win_rate_low <= b.win_rate_high and b.win_rate_low <= a.win_rate_high


def _same_settings(result: CellResult, cell: AblationCell) -> bool:
    used = result.beta if result.beta is not None else result.cell.beta
    return (result.cell.objective, result.cell.lora_r) == (cell.objective, cell.lora_r) and (cell.beta is None or used == cell.beta)


def recommend(cells: list[CellResult], current: AblationCell | None = None) -> Recommendation:
    """The article's rule: among the cells whose held-out margin tracks their training margin,
    the one ahead on held-out evidence (win rate against the champion; its held-out margin breaks
    ties). Adopt it only when its win-rate interval clears the current settings' cell (when the
    matrix holds it) or else the runner-up's; overlapping intervals: no change."""
    done = [c for c in cells if c.status == "done" and c.win_rate is not None]
    if not done:
        return Recommendation(cell=None, reasons=["no cell finished: no change"])
    tracking = [c for c in done if c.tracks]
    dropped = [c.cell.name for c in done if not c.tracks]
    reasons = [f"over-optimized (held-out margin did not track training margin): {', '.join(dropped)}"] if dropped else []
    if not tracking:
        return Recommendation(cell=None, reasons=reasons + ["no cell's held-out margin tracked its training margin: no change"])
    ranked = sorted(tracking, key=lambda c: (c.win_rate, c.heldout_margin if c.heldout_margin is not None else -math.inf), reverse=True)
    best = ranked[0]
    rival = next((c for c in done if current is not None and _same_settings(c, current)), None)
    if rival is None:
        rival = ranked[1] if len(ranked) > 1 else None
    head = f"{best.cell.name} leads: win rate {best.win_rate:.3f} [{best.win_rate_low:.3f}, {best.win_rate_high:.3f}]"
    if rival is best:
        return Recommendation(cell=None, reasons=reasons + [f"{head}, and it is the current settings: no change"])
    if rival is not None and _overlap(best, rival):
        return Recommendation(cell=None, reasons=reasons + [
            f"{head}, but its interval overlaps {rival.cell.name}'s [{rival.win_rate_low:.3f}, {rival.win_rate_high:.3f}]: "
            "no change (the evidence does not separate them)"])
    against = f"; clear of {rival.cell.name}'s [{rival.win_rate_low:.3f}, {rival.win_rate_high:.3f}]" if rival else ""
    return Recommendation(cell=best.cell, reasons=reasons + [f"{head}{against}, held-out margin tracking: adopt it"])


def ablation_figure(cells: list[CellResult]) -> bytes:
    """PNG: per cell, the training margin (each logged step, and each epoch's mean) and the
    held-out margin at each epoch's end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in cells if c.status == "done"] or cells
    cols = min(4, max(1, len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, shown):
        epochs = [e.epoch for e in c.epochs]
        if c.step_margins:
            ax.plot(*zip(*c.step_margins), color="tab:blue", alpha=0.35, linewidth=1, label="training, per step")
        ax.plot(epochs, [e.train_margin for e in c.epochs], marker="o", color="tab:blue", label="training, epoch mean")
        ax.plot(epochs, [e.heldout_margin if e.heldout_margin is not None else math.nan for e in c.epochs], marker="s",
                color="tab:orange", label="held-out")
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(c.cell.name + ("" if c.status == "done" else " (failed)"), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("reward margin")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table_rows(cells: list[CellResult], sweep: bool = False) -> tuple[list[str], list[list[str]]]:
    """The ablation's table: header and one row per cell (``sweep``: with drift and degeneration)."""
    header = ["objective", "rank", "beta", "train margin", "train acc", "held-out margin", "held-out acc",
              "win rate [95% CI]", "LC win rate", "constraints", "failure rate", "mean words", "benchmark deltas",
              "train s", "pairs/s", "status"]
    if sweep:
        header[-1:-1] = ["mean log-ratio", "KL to start", "degeneration"]
    rows = []
    for c in cells:
        win = "-" if c.win_rate is None else f"{c.win_rate:.3f} [{c.win_rate_low:.3f}, {c.win_rate_high:.3f}]"
        deltas = ", ".join(f"{t} {d * 100:+.1f}" for t, d in sorted(c.benchmark_deltas.items())) or "-"
        row = [c.cell.objective, str(c.cell.lora_r), _fmt(c.beta if c.beta is not None else c.cell.beta, "g"),
               _fmt(c.train_margin), _fmt(c.train_accuracy, ".2f"), _fmt(c.heldout_margin), _fmt(c.heldout_accuracy, ".2f"),
               win, _fmt(c.lc_win_rate), _fmt(c.constraint_rate), _fmt(c.failure_rate, ".2f"), _fmt(c.mean_words, ".0f"),
               deltas, _fmt(c.train_seconds, ".0f"), _fmt(c.pairs_per_s, ".2f"),
               "done" if c.status == "done" else f"FAILED: {c.error[:80]}"]
        if sweep:
            moved = "barely moves" if c.mean_logratio is not None and abs(c.mean_logratio) < BARELY_MOVES else ""
            row[-1:-1] = [_fmt(c.mean_logratio) + (f" ({moved})" if moved else ""), _fmt(c.kl_to_start),
                          "; ".join(c.degeneration()) or "-"]
        rows.append(row)
    return header, rows
