"""A round's figures in one record, and the table the command line prints."""

from __future__ import annotations

from pydantic import BaseModel


class RoundSummary(BaseModel):
    loop: str
    round: int
    flow_run_id: str = ""
    mlflow_run_id: str = ""
    champion_before: int  # round that produced the champion this round started from (0 = base)
    pairs_kept: int
    train_initial_loss: float | None = None
    train_final_loss: float | None = None
    train_reward_accuracy: float | None = None
    win_rate: float | None = None
    win_rate_low: float | None = None
    win_rate_high: float | None = None
    lc_win_rate: float | None = None
    constraint_rate_champion: float | None = None
    constraint_rate_challenger: float | None = None
    regression_deltas: dict[str, float] = {}
    alarms: list[str] = []
    promoted: bool
    reasons: list[str]
    artifacts: str = ""


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(rounds: list[RoundSummary]) -> str:
    """A plain-text table, one row per round."""
    header = [
        "round", "pairs", "loss 0->end", "rew.acc", "win rate [95% CI]", "LC win",
        "constraints champ->new", "regression deltas (pts)", "alarms", "decision",
    ]
    rows = []
    for r in rounds:
        loss = f"{_fmt(r.train_initial_loss)}->{_fmt(r.train_final_loss)}" if r.train_final_loss is not None else "-"
        win = (
            f"{_fmt(r.win_rate)} [{_fmt(r.win_rate_low)}, {_fmt(r.win_rate_high)}]" if r.win_rate is not None else "-"
        )
        cons = (
            f"{_fmt(r.constraint_rate_champion)}->{_fmt(r.constraint_rate_challenger)}"
            if r.constraint_rate_challenger is not None
            else "-"
        )
        deltas = " ".join(f"{k}:{v * 100:+.1f}" for k, v in r.regression_deltas.items()) or "-"
        rows.append([
            str(r.round), str(r.pairs_kept), loss, _fmt(r.train_reward_accuracy, ".2f"), win, _fmt(r.lc_win_rate), cons, deltas,
            ",".join(r.alarms) or "-",
            "PROMOTED" if r.promoted else "rejected",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
