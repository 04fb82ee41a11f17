"""What ``flywheel proof`` measured: each seed's rounds and answers (``SeedRun``), and every figure of
the round table over the seeds as mean and spread beside the eval's own 95% interval and, for the
pairwise eval's figures, the mean's interval over seeds and prompts (``MetricRow``), in one
``ProofReport``; ``proof_markdown`` writes it as the report reads it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from pydantic import BaseModel

from flows.round_records import RoundSummary
from flows.table import Table
from tasks.evaluate import Example


class SeedRun(BaseModel):
    seed: int  # k: generate.seed and train.seed are the config's plus k
    loop: str  # <loop>-seed<k>: its own artifacts, MLflow runs and registered model
    rounds: list[RoundSummary]
    held_out: dict[str, int] = {}  # round 1's held-out split: prompts, seen/unseen constraints and prompts carrying them
    champion_round: int = 0  # the round whose policy the seed ended with (0: none promoted)
    unrequested: dict[str, dict[str, int]] = {}  # "round 0", "champion": answers with each unasked form
    examples_rounds: tuple[int, int] = (0, 1)  # (earlier, later) policies of the examples
    best: list[Example] = []
    worst: list[Example] = []


class MetricRow(BaseModel):
    round: int
    metric: str
    values: list[float | None]  # one per seed, None where that seed's round lacks it
    mean: float | None
    std: float | None  # sample standard deviation over the seeds that have it (None: fewer than 2)
    low: float | None  # smallest and largest over the seeds
    high: float | None
    eval_half_width: float | None = None  # the eval's own 95% interval, half its width, mean over the seeds
    # The mean's 95% interval, seeds and held-out prompts both resampled (flows/proof_intervals.py); None:
    # not a figure of the pairwise eval, or no stored evaluation to resample.
    mean_low: float | None = None
    mean_high: float | None = None


class ProofReport(BaseModel):
    loop: str
    seeds: int
    rounds: int
    runs: list[SeedRun]
    rows: list[MetricRow]
    artifacts: str = ""


Figure = Callable[[RoundSummary], float | None]


def _half(low: str, high: str) -> Figure:
    return lambda s: None if getattr(s, low) is None or getattr(s, high) is None else (getattr(s, high) - getattr(s, low)) / 2


def _diff(before: str, after: str) -> Figure:
    return lambda s: None if getattr(s, before) is None or getattr(s, after) is None else getattr(s, after) - getattr(s, before)


# (name, figure, half-width of the eval's own 95% interval): the round table's figures (flows/rows.py).
METRICS: list[tuple[str, Figure, Figure | None]] = [
    ("pairs", lambda s: s.pairs_kept, None),
    ("truncated candidates", lambda s: s.truncated_share, None),
    ("DPO loss first", lambda s: s.train_initial_loss, None),
    ("DPO loss last", lambda s: s.train_final_loss, None),
    ("reward acc.", lambda s: s.train_reward_accuracy, None),
    ("win rate", lambda s: s.win_rate, _half("win_rate_low", "win_rate_high")),
    ("LC win rate", lambda s: s.lc_win_rate, None),
    ("constraints champion", lambda s: s.constraint_rate_champion, None),
    ("constraints new", lambda s: s.constraint_rate_challenger, None),
    ("seen types champion", lambda s: s.seen_rate_champion, None),
    ("seen types new", lambda s: s.seen_rate_challenger, None),
    ("seen types change", _diff("seen_rate_champion", "seen_rate_challenger"), _half("seen_change_low", "seen_change_high")),
    ("unseen types champion", lambda s: s.unseen_rate_champion, None),
    ("unseen types new", lambda s: s.unseen_rate_challenger, None),
    ("unseen types change", _diff("unseen_rate_champion", "unseen_rate_challenger"), _half("unseen_change_low", "unseen_change_high")),
    ("unconstrained: words round 0", lambda s: s.unconstrained_words_round0, None),
    ("unconstrained: words champion", lambda s: s.unconstrained_words_champion, None),
    ("unconstrained: words new", lambda s: s.unconstrained_words_challenger, None),
    ("unconstrained: with a failure mode champion", lambda s: s.unconstrained_failure_champion, None),
    ("unconstrained: with a failure mode new", lambda s: s.unconstrained_failure_challenger, None),
    ("unconstrained: win rate", lambda s: s.unconstrained_win_rate, None),
    ("held out: any failure mode champion", lambda s: s.failure_rates_champion.get("any"), None),
    ("held out: any failure mode new", lambda s: s.failure_rates_challenger.get("any"), None),
    ("promoted", lambda s: float(s.promoted), None),
]


def _known(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def metric_row(round_index: int, metric: str, values: list[float | None], half_widths: list[float | None] = ()) -> MetricRow:
    """One figure over the seeds: mean, standard deviation, range, and the mean half-width of the eval's interval."""
    known = [v for v in map(_known, values) if v is not None]
    widths = [w for w in map(_known, half_widths) if w is not None]
    return MetricRow(round=round_index, metric=metric, values=[_known(v) for v in values],
                     mean=statistics.fmean(known) if known else None, std=statistics.stdev(known) if len(known) > 1 else None,
                     low=min(known, default=None), high=max(known, default=None),
                     eval_half_width=statistics.fmean(widths) if widths else None)


def metric_rows(runs: list[SeedRun], rounds: int) -> list[MetricRow]:
    """Every figure of every round over the seeds, benchmark deltas included (one row per task)."""
    rows = []
    for index in range(rounds):
        summaries = [run.rounds[index] if index < len(run.rounds) else None for run in runs]
        for name, figure, half in METRICS:
            values = [figure(s) if s else None for s in summaries]
            rows.append(metric_row(index + 1, name, values, [half(s) if s and half else None for s in summaries]))
        tasks = sorted({task for s in summaries if s for task in s.regression_deltas})
        rows += [metric_row(index + 1, f"benchmark Δ {task}", [s.regression_deltas.get(task) if s else None for s in summaries])
                 for task in tasks]
    return rows


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def rows_table(rows: list[MetricRow], seeds: int) -> Table:
    """The rows as a table: mean ± std, the range over the seeds, the eval's interval, each seed's value."""
    header = ["round", "figure", "mean ± std over seeds", "min..max", "mean's 95% CI", "eval's 95% CI (±)",
              *(f"seed {k}" for k in range(seeds))]
    return Table(header, [[r.round, r.metric, f"{_num(r.mean)} ± {_num(r.std)}", f"{_num(r.low)}..{_num(r.high)}",
                           "-" if r.mean_low is None else f"[{_num(r.mean_low)}, {_num(r.mean_high)}]",
                           _num(r.eval_half_width), *(_num(v) for v in r.values)] for r in rows])
