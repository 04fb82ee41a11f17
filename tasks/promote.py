"""promote: the gate that decides whether the challenger becomes champion.

Reads: the pairwise result (with the unconstrained prompts' figures and the unseen types' change),
the regression result and the training alarms.
Writes: ``decision.json``. When the challenger is promoted, the flow makes it the
champion (infra/champion.py); a rejected round leaves the champion untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from pydantic import BaseModel

from infra.settings import PromotionConfig

if TYPE_CHECKING:
    from tasks.evaluate import PairwiseResult
    from tasks.regression import RegressionResult
    from tasks.training.diagnostics import Alarm


class Decision(BaseModel):
    promote: bool
    reasons: list[str]


class Check(NamedTuple):
    """One finding of the gate: ``ok`` is False when it blocks promotion."""

    ok: bool
    reason: str


def wins_pairwise(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """The challenger beats the champion's bar (ties count half): by default the whole 95% interval
    does (``win_rate_bound: lower``), so a coin flip's luck does not promote; else the point estimate."""
    rate, low, high, bar = pairwise.win_rate, pairwise.win_rate_low, pairwise.win_rate_high, config.min_win_rate
    figures = f"95% CI {low:.3f}-{high:.3f}; {pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L"
    if not rate > bar:  # nan (nothing judged) too
        yield Check(False, f"did not win the pairwise eval: win rate {rate:.3f} <= {bar:.3f} ({figures})")
    elif config.win_rate_bound == "point":
        yield Check(True, f"won the pairwise eval: win rate {rate:.3f} > {bar:.3f} ({figures})")
    elif low > bar:
        yield Check(True, f"won the pairwise eval: the 95% interval's lower end {low:.3f} > {bar:.3f} "
                          f"(win rate {rate:.3f}, {figures})")
    else:
        yield Check(False, f"did not win the pairwise eval clearly: win rate {rate:.3f} > {bar:.3f} but the 95% "
                           f"interval's lower end {low:.3f} <= {bar:.3f}, so a coin flip cannot be ruled out ({figures}; "
                           "promotion.win_rate_bound: point accepts the point estimate)")


def wins_at_equal_length(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """At equal length the challenger still beats the bar (``require_length_controlled_win``).

    The guard is against winning by being longer. A challenger that got shorter and wins loses
    nothing to a judge's verbosity bias, and where the prompts ask for brevity (word limits) its
    length is part of why it wins, which regressing length out would wrongly discount."""
    lc, before, after = pairwise.lc_win_rate, pairwise.champion_mean_words, pairwise.challenger_mean_words
    if not config.require_length_controlled_win or math.isnan(lc) or lc > config.min_win_rate:
        return
    if after < before:  # False when either is unknown (nan)
        yield Check(True, f"length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f} not held against it: "
                          f"its answers are shorter ({after:.0f} against {before:.0f} words on average)")
    else:
        what = "wins by length, not quality: " if pairwise.win_rate > config.min_win_rate else ""
        yield Check(False, f"{what}length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f}")


def no_more_failure_modes(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """The share of answers showing any failure mode rises by at most ``max_failure_increase``, on
    the held-out prompts and, apart, on the unconstrained ones (where gaming a checker shows most)."""
    sets = [("", pairwise.champion_failure_rates, pairwise.challenger_failure_rates)]
    if (u := pairwise.unconstrained) is not None:
        sets.append((" to unconstrained prompts", u.champion_failure_rates, u.challenger_failure_rates))
    for where, champion_rates, challenger_rates in sets:
        before, after = champion_rates.get("any"), challenger_rates.get("any")
        if before is None or after is None or after - before <= config.max_failure_increase:
            continue
        worse = [m for m, r in challenger_rates.items() if m != "any" and r > champion_rates.get(m, 0)]
        yield Check(False, f"more failure modes: {after:.0%} of answers{where} show one, against {before:.0%} for the "
                           f"champion (allowed rise {config.max_failure_increase:.0%}; worse: {', '.join(worse)})")


def keeps_its_length(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """On the unconstrained prompts, the challenger's mean answer length stays within
    ``max_length_drift`` of the ROUND-0 policy's (not the champion's: drift must not add up)."""
    u = pairwise.unconstrained
    if config.max_length_drift is None or u is None or not u.baseline_mean_words:  # None: no round-0 answers
        return
    after, base, tolerance = u.challenger_mean_words, u.baseline_mean_words, config.max_length_drift
    drift = after / base - 1
    figures = f"{after:.0f} against {base:.0f} words on average over {u.n} unconstrained prompts; allowed ±{tolerance:.0%}"
    if abs(drift) <= tolerance:
        yield Check(True, f"answer length within bounds of round 0's: {drift:+.0%} ({figures})")
    else:
        how = "shrank" if drift < 0 else "grew"
        yield Check(False, f"answers {how} {abs(drift):.0%} against round 0's ({figures})")


def keeps_unseen_types(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """Satisfaction on the unseen constraint types (held out of training) does not drop by more than
    ``max_unseen_drop`` with its paired interval below 0; decided when that interval's half-width is
    at most ``unseen_decisive_half_width`` or the whole interval lies below ``-max_unseen_drop``,
    reported either way."""
    before, after = pairwise.champion_unseen_rate, pairwise.challenger_unseen_rate
    low, high = pairwise.unseen_change_low, pairwise.unseen_change_high
    if config.max_unseen_drop is None or before is None or after is None or low is None or high is None:
        return  # off, or no unseen type held out (or a result from before the intervals were measured)
    change, half, margin = after - before, (high - low) / 2, config.max_unseen_drop
    figures = (f"unseen types {before:.3f} → {after:.3f} ({change * 100:+.1f} points, paired 95% CI "
               f"{low * 100:+.1f} to {high * 100:+.1f}, ±{half * 100:.1f}, over {pairwise.n_unseen_prompts} prompts)")
    # A wide interval lying wholly beyond the margin decides too: even its best end is a drop too large.
    beyond_margin = high < -margin
    if half > config.unseen_decisive_half_width and not beyond_margin:
        yield Check(True, f"unseen-type check not deciding: {figures}: the interval is wider than "
                          f"±{config.unseen_decisive_half_width * 100:.1f} points (more held-out prompts: prompts.n_eval, prompts.unseen_led_per_topic)")
    elif -change > margin and high < 0:
        how = "its whole interval beyond that" if half > config.unseen_decisive_half_width else "its interval below 0"
        yield Check(False, f"lost on the unseen instruction types: {figures}: a drop beyond {margin * 100:.1f} points with "
                           f"{how} (training fitted the types it saw)")
    else:
        yield Check(True, f"kept the unseen instruction types: {figures}; allowed drop {margin * 100:.1f} points")


def clears_not_learning_bar(pairwise: PairwiseResult, alarms: list[Alarm], config: PromotionConfig) -> Iterator[Check]:
    """A challenger whose training raised not_learning (not blocking) must win clearly: its win
    rate's interval's lower end above ``not_learning_min_win_rate``."""
    bar = config.not_learning_min_win_rate
    if bar is None or "not_learning" in config.blocking_alarms or not any(a.name == "not_learning" for a in alarms):
        return
    low = pairwise.win_rate_low
    if low > bar:
        yield Check(True, f"its training raised not_learning, but the win is clear: the 95% interval's lower end {low:.3f} > "
                          f"{bar:.3f} (promotion.not_learning_min_win_rate)")
    else:
        yield Check(False, f"its training raised not_learning and the win is not clear enough for that: the 95% interval's "
                           f"lower end {low:.3f} <= {bar:.3f} (promotion.not_learning_min_win_rate)")


def passes_regression(regression: RegressionResult | None, config: PromotionConfig) -> Iterator[Check]:
    """No benchmark dropped beyond tolerance; blocking only when ``require_regression_pass``."""
    enforced = config.require_regression_pass
    if regression is None:
        if enforced:
            yield Check(False, "capability-regression check did not run")
    elif regression.passed:
        yield Check(True, "passed the capability-regression check")
    else:
        # A failed result always names its tasks; the fallback keeps a refusal from going unexplained.
        yield from (Check(not enforced, r) for r in regression.reasons or ["failed the capability-regression check"])
        if not enforced:
            yield Check(True, "regression not enforced (promotion.require_regression_pass is false)")


def no_blocking_alarm(alarms: list[Alarm], config: PromotionConfig) -> Iterator[Check]:
    """Every training alarm is shown; those in ``blocking_alarms`` block."""
    for alarm in alarms:
        if alarm.name in config.blocking_alarms:
            yield Check(False, f"training alarm {alarm.name}: {alarm.message}")
        else:
            yield Check(True, f"training alarm {alarm.name} (not blocking): {alarm.message}")


def decide_promotion(
    pairwise: PairwiseResult | None,
    regression: RegressionResult | None,
    config: PromotionConfig,
    alarms: list[Alarm] | None = None,
    not_trained: str | None = None,
) -> Decision:
    """Promote only if the challenger wins the pairwise eval (by its interval's lower end unless
    configured otherwise; at equal length too, unless it got shorter), shows no more failure modes,
    kept its answers to unconstrained prompts near round 0's length, did not clearly lose on the
    unseen instruction types, passes the regression check and raised no blocking training alarm
    (and, after a not_learning alarm, won by a stricter bar). ``pairwise`` is None when no challenger was trained
    (``not_trained`` says why), ``regression`` when it did not run."""
    if pairwise is None:
        return Decision(promote=False, reasons=[not_trained or "no challenger was trained this round"])
    checks = [
        *wins_pairwise(pairwise, config),
        *wins_at_equal_length(pairwise, config),
        *no_more_failure_modes(pairwise, config),
        *keeps_its_length(pairwise, config),
        *keeps_unseen_types(pairwise, config),
        *passes_regression(regression, config),
        *no_blocking_alarm(alarms or [], config),
        *clears_not_learning_bar(pairwise, alarms or [], config),
    ]
    return Decision(promote=all(c.ok for c in checks), reasons=[c.reason for c in checks])
