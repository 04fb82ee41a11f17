"""promote: the gate that decides whether the challenger becomes champion.

Reads: the pairwise result, the regression result and the training alarms.
Writes: ``decision.json``. When the challenger is promoted, the flow makes it the
champion (infra/champion.py); a rejected round leaves the champion untouched.
"""

from __future__ import annotations

from pydantic import BaseModel

from infra.settings import PromotionConfig


class Decision(BaseModel):
    promote: bool
    reasons: list[str]


def decide_promotion(pairwise, regression, config: PromotionConfig, alarms: list | None = None) -> Decision:
    """Promote only if the challenger wins the pairwise eval, passes the regression check and
    raised no blocking training alarm.

    ``pairwise`` is a PairwiseResult or None (no challenger trained); ``regression``
    a RegressionResult or None (not run); ``alarms`` the training diagnostics' Alarms.
    """
    reasons: list[str] = []
    promote = True
    if pairwise is None:
        return Decision(promote=False, reasons=["no challenger was trained this round"])
    if pairwise.win_rate > config.min_win_rate:
        reasons.append(
            f"won the pairwise eval: win rate {pairwise.win_rate:.3f} > {config.min_win_rate:.3f} "
            f"(95% CI {pairwise.win_rate_low:.3f}-{pairwise.win_rate_high:.3f}; "
            f"{pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L)"
        )
    else:
        promote = False
        reasons.append(
            f"did not win the pairwise eval: win rate {pairwise.win_rate:.3f} <= {config.min_win_rate:.3f} "
            f"({pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L)"
        )
    lc = getattr(pairwise, "lc_win_rate", float("nan"))
    champion_words = getattr(pairwise, "champion_mean_words", float("nan"))
    challenger_words = getattr(pairwise, "challenger_mean_words", float("nan"))
    # The guard is against winning by being longer. A challenger that got shorter and wins loses
    # nothing to a judge's verbosity bias, and where the prompts ask for brevity (word limits) its
    # length is part of why it wins, which regressing length out would wrongly discount.
    shorter = challenger_words < champion_words  # False when either is unknown (nan)
    if config.require_length_controlled_win and lc == lc and lc <= config.min_win_rate:
        if shorter:
            reasons.append(
                f"length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f} not held against it: "
                f"its answers are shorter ({challenger_words:.0f} against {champion_words:.0f} words on average)"
            )
        else:
            promote = False
            what = "wins by length, not quality: " if pairwise.win_rate > config.min_win_rate else ""
            reasons.append(f"{what}length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f}")
    before = getattr(pairwise, "champion_failure_rates", {}).get("any")
    after = getattr(pairwise, "challenger_failure_rates", {}).get("any")
    if before is not None and after is not None and after - before > config.max_failure_increase:
        promote = False
        worse = [m for m, r in pairwise.challenger_failure_rates.items() if m != "any" and r > pairwise.champion_failure_rates.get(m, 0)]
        reasons.append(
            f"more failure modes: {after:.0%} of answers show one, against {before:.0%} for the champion "
            f"(allowed rise {config.max_failure_increase:.0%}; worse: {', '.join(worse)})"
        )
    if regression is None:
        if config.require_regression_pass:
            promote = False
            reasons.append("capability-regression check did not run")
    elif regression.passed:
        reasons.append("passed the capability-regression check")
    else:
        reasons.extend(regression.reasons)
        if config.require_regression_pass:
            promote = False
        else:
            reasons.append("regression not enforced (promotion.require_regression_pass is false)")
    for alarm in alarms or []:
        if alarm.name in config.blocking_alarms:
            promote = False
            reasons.append(f"training alarm {alarm.name}: {alarm.message}")
        else:
            reasons.append(f"training alarm {alarm.name} (not blocking): {alarm.message}")
    return Decision(promote=promote, reasons=reasons)
