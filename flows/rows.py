"""What a round, the loop's history and a comparison show, as rows and tables (``flows/table.py``)
built once from their records; ``flows/render.py`` turns those into text, markdown or HTML."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from flows.table import Row, Table, side_by_side

if TYPE_CHECKING:
    from flows.comparison_records import Comparison
    from flows.round_records import RoundSummary
    from tasks.evaluate import UnconstrainedResult


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)  # None or nan: unknown


def _change(before: float | None, after: float | None, spec: str = ".3f") -> str:
    return "-" if after is None else f"{_num(before, spec)} → {_num(after, spec)}"


def _interval(rate: float | None, low: float | None, high: float | None) -> str:
    return "-" if rate is None else f"{_num(rate)} [{_num(low)}, {_num(high)}]"


def _split(before: float | None, after: float | None, low: float | None, high: float | None, prompts: int | None = None) -> str:
    """A kind's satisfaction before → after, then, when measured, its change in points with the paired
    95% interval (and over how many prompts)."""
    change = _change(before, after)
    if change == "-" or before is None or after is None or low is None or high is None:
        return change
    over = "" if prompts is None else f", {prompts} prompts"
    return f"{change} ({(after - before) * 100:+.1f} points [{low * 100:+.1f}, {high * 100:+.1f}]{over})"


def _rates(before: dict[str, float], after: dict[str, float]) -> str:
    """Each failure mode either policy shows, as 'mode before → after' in percent; "any" first."""
    modes = sorted({m for m, r in [*before.items(), *after.items()] if r and not math.isnan(r)}, key=lambda m: (m != "any", m))
    return ", ".join(f"{m} {_num(before.get(m), '.0%')} → {_num(after.get(m), '.0%')}" for m in modes) or "-"


def _words(round0: float | None, before: float | None, after: float | None) -> str:
    """Mean words before → after, with round 0's (the drift gate's reference) when known."""
    change = _change(before, after, ".0f")
    return change if round0 is None or change == "-" else f"{change} (round 0: {_num(round0, '.0f')})"


def decision(promoted: bool) -> str:
    return "PROMOTED" if promoted else "rejected"


def summary_rows(s: RoundSummary) -> list[Row]:
    """A round's figures: the round's markdown summary lists them, the history has a column each."""
    return [
        ("pairs", s.pairs_kept),
        ("truncated candidates", _num(s.truncated_share, ".1%")),
        ("DPO loss first → last", _change(s.train_initial_loss, s.train_final_loss)),
        ("reward acc.", _num(s.train_reward_accuracy, ".2f")),
        ("win rate [95% CI]", _interval(s.win_rate, s.win_rate_low, s.win_rate_high)),
        ("LC win rate", _num(s.lc_win_rate)),
        ("constraints champion → new", _change(s.constraint_rate_champion, s.constraint_rate_challenger)),
        ("seen types champion → new", _split(s.seen_rate_champion, s.seen_rate_challenger, s.seen_change_low, s.seen_change_high)),
        ("unseen types champion → new",
         _split(s.unseen_rate_champion, s.unseen_rate_challenger, s.unseen_change_low, s.unseen_change_high)),
        ("unconstrained: words", _words(s.unconstrained_words_round0, s.unconstrained_words_champion,
                                        s.unconstrained_words_challenger)),
        ("unconstrained: with a failure mode",
         _change(s.unconstrained_failure_champion, s.unconstrained_failure_challenger)),
        ("unconstrained: win rate", _num(s.unconstrained_win_rate)),
        ("failure modes champion → new", _rates(s.failure_rates_champion, s.failure_rates_challenger)),
        ("benchmark Δ (points)", ", ".join(f"{task} {delta * 100:+.1f}" for task, delta in s.regression_deltas.items()) or "-"),
        ("alarms", ", ".join(s.alarms) or "-"),
    ]


def history_table(history: list[RoundSummary]) -> Table:
    """The loop's rounds, one row each."""
    return side_by_side([[("round", s.round), *summary_rows(s), ("decision", decision(s.promoted))] for s in history])


def comparison_rows(c: Comparison) -> list[Row]:
    """What ``flywheel compare`` measured: the later policy against the baseline ("champion" in the
    pairwise result), and each benchmark under the promotion gate's tolerance."""
    r = c.result
    return [
        ("win rate [95% CI]", _interval(r.win_rate, r.win_rate_low, r.win_rate_high)),
        ("wins/ties/losses", f"{r.wins}/{r.ties}/{r.losses}"),
        ("LC win rate", _num(r.lc_win_rate)),
        ("constraints met", _change(r.champion_constraint_rate, r.challenger_constraint_rate)),
        ("every constraint met", _change(r.champion_strict_rate, r.challenger_strict_rate)),
        ("mean words", _change(r.champion_mean_words, r.challenger_mean_words, ".0f")),
        ("answers with a failure mode", _change(r.champion_failure_rates.get("any"), r.challenger_failure_rates.get("any"))),
        ("seen types met", _split(r.champion_seen_rate, r.challenger_seen_rate, r.seen_change_low, r.seen_change_high,
                                  r.n_seen_prompts)),
        ("unseen types met", _split(r.champion_unseen_rate, r.challenger_unseen_rate, r.unseen_change_low,
                                    r.unseen_change_high, r.n_unseen_prompts)),
        *_unconstrained_rows(r.unconstrained),
        ("failure modes", _rates(r.champion_failure_rates, r.challenger_failure_rates)),
        *((t.task, f"{t.before:.3f} → {t.after:.3f} ({t.delta * 100:+.1f} points{'' if t.passed else ', beyond the gate'})")
          for t in (c.regression.tasks if c.regression else [])),
    ]


def _unconstrained_rows(u: UnconstrainedResult | None) -> list[Row]:
    """The unconstrained prompts' figures: length, failure modes and a model judge's verdicts."""
    if u is None:
        return []
    quartiles = lambda q: "/".join(format(v, ".0f") for v in q) or "-"  # noqa: E731
    rows = [
        ("unconstrained: words", _words(u.baseline_mean_words, u.champion_mean_words, u.challenger_mean_words)),
        ("unconstrained: words q1/median/q3", f"{quartiles(u.champion_quartiles)} → {quartiles(u.challenger_quartiles)}"),
        ("unconstrained: with a failure mode", _change(u.champion_failure_rates.get("any"), u.challenger_failure_rates.get("any"))),
    ]
    if u.judge is not None:
        rows.append((f"unconstrained: win rate ({u.judge}) [95% CI]", _interval(u.win_rate, u.win_rate_low, u.win_rate_high)))
    return rows


def comparisons_table(comparisons: list[Comparison]) -> Table:
    """Every comparison so far, one row each."""
    return side_by_side([
        [("policy", f"round {c.challenger_round}"), ("against", f"round {c.baseline_round}"), ("prompts", c.n_prompts),
         *comparison_rows(c)]
        for c in comparisons
    ])
