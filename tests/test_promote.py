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
