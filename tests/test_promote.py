import pytest

from infra.settings import PromotionConfig
from tasks.evaluate import PairwiseResult, bootstrap_interval, combine_orders
from tasks.promote import decide_promotion


class Regression:
    def __init__(self, passed, reasons=()):
        self.passed, self.reasons = passed, list(reasons)


def pairwise(win_rate):
    return PairwiseResult(
        n=10, wins=int(win_rate * 10), ties=0, losses=10 - int(win_rate * 10), win_rate=win_rate,
        win_rate_low=win_rate - 0.1, win_rate_high=win_rate + 0.1, consistency_rate=1.0,
        champion_constraint_rate=0.5, challenger_constraint_rate=0.6, champion_strict_rate=0.3, challenger_strict_rate=0.4,
    )


@pytest.mark.parametrize(
    "win_rate, regression, require, promote, fragment",
    [
        (0.7, Regression(True), True, True, "won the pairwise eval"),
        (0.5, Regression(True), True, False, "did not win"),
        (0.3, Regression(True), True, False, "did not win"),
        (0.7, Regression(False, ["piqa dropped 5.0 points"]), True, False, "piqa dropped"),
        (0.7, Regression(False, ["piqa dropped 5.0 points"]), False, True, "not enforced"),
        (0.7, None, True, False, "did not run"),
        (None, None, True, False, "no challenger"),
    ],
)
def test_decide_promotion(win_rate, regression, require, promote, fragment):
    decision = decide_promotion(
        pairwise(win_rate) if win_rate is not None else None, regression, PromotionConfig(require_regression_pass=require)
    )
    assert decision.promote is promote
    assert any(fragment in r for r in decision.reasons)


@pytest.mark.parametrize(
    "forward, backward, outcome",
    [("B", "A", "win"), ("A", "B", "loss"), ("tie", "tie", "tie"), ("A", "A", "tie"), ("B", "B", "tie"), ("B", "tie", "tie")],
)
def test_both_orders_must_agree(forward, backward, outcome):
    assert combine_orders(forward, backward) == outcome


def test_bootstrap_interval_brackets_mean():
    import numpy as np

    scores = np.array([1.0] * 30 + [0.0] * 10)
    low, high = bootstrap_interval(scores, 2000, seed=0)
    assert low < 0.75 < high and 0.55 < low and high < 0.9


def test_blocking_alarm_refuses_and_others_are_only_recorded():
    from tasks.diagnostics import Alarm

    winning = pairwise(0.8)
    wrong_reference = Alarm(name="reference_mismatch", message="initial loss 0.41")
    drift = Alarm(name="same_direction_drift", message="both down")
    refused = decide_promotion(winning, Regression(True), PromotionConfig(), [wrong_reference, drift])
    assert not refused.promote
    assert any("reference_mismatch" in r for r in refused.reasons)
    assert any("same_direction_drift (not blocking)" in r for r in refused.reasons)
    assert decide_promotion(winning, Regression(True), PromotionConfig(), [drift]).promote


def _with_length(base, lc_win_rate, champion_any=0.1, challenger_any=0.1, champion_words=40.0, challenger_words=60.0):
    return base.model_copy(update={
        "lc_win_rate": lc_win_rate,
        "champion_mean_words": champion_words,
        "challenger_mean_words": challenger_words,
        "champion_failure_rates": {"any": champion_any, "verbose": champion_any},
        "challenger_failure_rates": {"any": challenger_any, "verbose": challenger_any},
    })


def test_a_policy_that_only_wins_by_length_is_refused():
    from tasks.evaluate import length_controlled_win_rate

    # Longer on 14 prompts, winning 11 of them; shorter on 6, winning none: raw win rate 0.575.
    diffs = [30, 25, 40, 20, 35, 28, 33, 22, 31, 27, 26, 38, 24, 29, -30, -25, -35, -20, -28, -33]
    outcomes = [1.0] * 11 + [0.5, 0.0, 0.0] + [0.0] * 6
    lc = length_controlled_win_rate(outcomes, diffs)
    assert lc < 0.3
    refused = decide_promotion(_with_length(pairwise(0.7), lc), Regression(True), PromotionConfig())
    assert not refused.promote and any("wins by length" in r for r in refused.reasons)
    # Wins that do not depend on length keep their rate, and pass.
    fair = length_controlled_win_rate([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], [30, -25, 40, -20, 35, -28, 33, -30, 25, -35])
    assert abs(fair - 0.8) < 0.02
    assert decide_promotion(_with_length(pairwise(0.8), fair), Regression(True), PromotionConfig()).promote


def test_a_shorter_policy_is_not_refused_for_its_length_controlled_win_rate():
    # Answers to word-limited prompts win by getting shorter: that is the point, not a judge bias.
    shorter = _with_length(pairwise(0.7), 0.3, champion_words=60.0, challenger_words=35.0)
    decision = decide_promotion(shorter, Regression(True), PromotionConfig())
    assert decision.promote and any("not held against it" in r for r in decision.reasons)
    # The same figures from a longer challenger are refused.
    longer = _with_length(pairwise(0.7), 0.3, champion_words=35.0, challenger_words=60.0)
    assert not decide_promotion(longer, Regression(True), PromotionConfig()).promote


def test_a_policy_with_more_failure_modes_is_refused():
    worse = _with_length(pairwise(0.8), 0.8, champion_any=0.10, challenger_any=0.30)
    refused = decide_promotion(worse, Regression(True), PromotionConfig())
    assert not refused.promote and any("more failure modes" in r and "verbose" in r for r in refused.reasons)
