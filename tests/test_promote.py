import pytest

from infra.settings import PromotionConfig
from tasks.evaluate import PairwiseResult, UnconstrainedResult, bootstrap_interval, combine_orders
from tasks.promote import decide_promotion, keeps_its_length, no_blocking_alarm, passes_regression, wins_pairwise
from tasks.regression import BenchmarkScore, RegressionResult, compare_scores
from tasks.training.diagnostics import Alarm


def pairwise(win_rate, *, lc_win_rate=float("nan"), champion_words=float("nan"), challenger_words=float("nan"),
             champion_any=None, challenger_any=None, unconstrained=None) -> PairwiseResult:
    """A pairwise result on 10 prompts (no ties) with the figures the gate reads; failure rates,
    when given, are the same for 'any' and 'verbose'. Its 95% interval reaches 0.1 either side."""
    wins = int(win_rate * 10)
    return PairwiseResult(
        n=10, wins=wins, ties=0, losses=10 - wins, win_rate=win_rate,
        win_rate_low=win_rate - 0.1, win_rate_high=win_rate + 0.1, consistency_rate=1.0,
        champion_constraint_rate=0.5, challenger_constraint_rate=0.6, champion_strict_rate=0.3, challenger_strict_rate=0.4,
        lc_win_rate=lc_win_rate, champion_mean_words=champion_words, challenger_mean_words=challenger_words,
        champion_failure_rates=rates(champion_any), challenger_failure_rates=rates(challenger_any), unconstrained=unconstrained,
    )


def rates(any_: float | None) -> dict[str, float]:
    return {} if any_ is None else {"any": any_, "verbose": any_}


def unconstrained(baseline_words: float | None, champion_words: float, challenger_words: float,
                  champion_any: float = 0.1, challenger_any: float = 0.1) -> UnconstrainedResult:
    """The unconstrained prompts' figures: 4 answers of each policy, all of the given length."""
    words = lambda n: [] if n is None else [round(n)] * 4  # noqa: E731
    return UnconstrainedResult(
        n=4, champion_words=words(champion_words), challenger_words=words(challenger_words), baseline_words=words(baseline_words),
        champion_mean_words=champion_words, challenger_mean_words=challenger_words, baseline_mean_words=baseline_words,
        champion_quartiles=[champion_words] * 3, challenger_quartiles=[challenger_words] * 3,
        champion_failure_rates=rates(champion_any), challenger_failure_rates=rates(challenger_any),
    )


def regression(piqa_drop_points: float = 0.0) -> RegressionResult:
    """The regression check on one benchmark (piqa, 2 points of tolerance) after a drop of that many points."""
    score = lambda s: {"piqa": BenchmarkScore(task="piqa", metric="acc_norm", score=s, stderr=0.01, n_items=500)}  # noqa: E731
    return compare_scores(score(0.70), score(0.70 - piqa_drop_points / 100), tolerance=0.02)


@pytest.mark.parametrize(
    "win_rate, result, require, promote, fragment",
    [
        (0.7, regression(), True, True, "won the pairwise eval"),
        (0.5, regression(), True, False, "did not win"),
        (0.3, regression(), True, False, "did not win"),
        (0.7, regression(5.0), True, False, "piqa dropped 5.0 points"),
        (0.7, regression(5.0), False, True, "not enforced"),
        (0.7, None, True, False, "did not run"),
        (None, None, True, False, "no challenger"),
    ],
)
def test_decide_promotion(win_rate, result, require, promote, fragment):
    decision = decide_promotion(
        pairwise(win_rate) if win_rate is not None else None, result, PromotionConfig(require_regression_pass=require)
    )
    assert decision.promote is promote
    assert any(fragment in r for r in decision.reasons)


def test_each_check_says_whether_it_blocks():
    [dropped] = passes_regression(regression(5.0), PromotionConfig())
    assert not dropped.ok and dropped.reason.startswith("piqa dropped 5.0 points")
    assert [c.ok for c in passes_regression(regression(5.0), PromotionConfig(require_regression_pass=False))] == [True, True]
    assert list(passes_regression(None, PromotionConfig(require_regression_pass=False))) == []
    assert list(no_blocking_alarm([], PromotionConfig())) == []


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
    winning = pairwise(0.8)
    wrong_reference = Alarm(name="reference_mismatch", message="initial loss 0.41")
    drift = Alarm(name="same_direction_drift", message="both down")
    refused = decide_promotion(winning, regression(), PromotionConfig(), [wrong_reference, drift])
    assert not refused.promote
    assert any("reference_mismatch" in r for r in refused.reasons)
    assert any("same_direction_drift (not blocking)" in r for r in refused.reasons)
    assert decide_promotion(winning, regression(), PromotionConfig(), [drift]).promote


def test_a_policy_that_only_wins_by_length_is_refused():
    from tasks.evaluate import length_controlled_win_rate

    # Longer on 14 prompts, winning 11 of them; shorter on 6, winning none: raw win rate 0.575.
    diffs = [30, 25, 40, 20, 35, 28, 33, 22, 31, 27, 26, 38, 24, 29, -30, -25, -35, -20, -28, -33]
    outcomes = [1.0] * 11 + [0.5, 0.0, 0.0] + [0.0] * 6
    lc = length_controlled_win_rate(outcomes, diffs)
    assert lc < 0.3
    refused = decide_promotion(pairwise(0.7, lc_win_rate=lc, champion_words=40.0, challenger_words=60.0), regression(), PromotionConfig())
    assert not refused.promote and any("wins by length" in r for r in refused.reasons)
    # Wins that do not depend on length keep their rate, and pass.
    fair = length_controlled_win_rate([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], [30, -25, 40, -20, 35, -28, 33, -30, 25, -35])
    assert abs(fair - 0.8) < 0.02
    assert decide_promotion(pairwise(0.8, lc_win_rate=fair, champion_words=40.0, challenger_words=60.0), regression(), PromotionConfig()).promote


def test_a_shorter_policy_is_not_refused_for_its_length_controlled_win_rate():
    # Answers to word-limited prompts win by getting shorter: that is the point, not a judge bias.
    shorter = pairwise(0.7, lc_win_rate=0.3, champion_words=60.0, challenger_words=35.0)
    decision = decide_promotion(shorter, regression(), PromotionConfig())
    assert decision.promote and any("not held against it" in r for r in decision.reasons)
    # The same figures from a longer challenger are refused.
    longer = pairwise(0.7, lc_win_rate=0.3, champion_words=35.0, challenger_words=60.0)
    assert not decide_promotion(longer, regression(), PromotionConfig()).promote


def test_a_policy_with_more_failure_modes_is_refused():
    worse = pairwise(0.8, lc_win_rate=0.8, champion_any=0.10, challenger_any=0.30)
    refused = decide_promotion(worse, regression(), PromotionConfig())
    assert not refused.promote and any("more failure modes" in r and "verbose" in r for r in refused.reasons)


def test_a_win_must_clear_the_bar_with_its_whole_interval():
    # Win rate 0.55 above the bar, but its 95% interval (0.45-0.65) reaches below it: a coin flip.
    lucky = pairwise(0.55)
    refused = decide_promotion(lucky, regression(), PromotionConfig())
    assert not refused.promote
    [check] = wins_pairwise(lucky, PromotionConfig())
    assert not check.ok and "lower end 0.450 <= 0.500" in check.reason and "coin flip" in check.reason
    # The point estimate is enough when configured so.
    assert decide_promotion(lucky, regression(), PromotionConfig(win_rate_bound="point")).promote
    # A clear win passes by default, naming the lower end it cleared.
    [clear] = wins_pairwise(pairwise(0.7), PromotionConfig())
    assert clear.ok and "lower end 0.600 > 0.500" in clear.reason
    # A loss is refused either way.
    for bound in ("lower", "point"):
        [lost] = wins_pairwise(pairwise(0.4), PromotionConfig(win_rate_bound=bound))
        assert not lost.ok and "did not win the pairwise eval: win rate 0.400 <= 0.500" in lost.reason


def test_answers_that_collapsed_in_length_against_round_0_are_refused():
    # The champion had already drifted (30 words against round 0's 50); each round's step is small,
    # but the sum is not: the gate measures against round 0.
    collapsed = pairwise(0.8, unconstrained=unconstrained(baseline_words=50, champion_words=30, challenger_words=29))
    refused = decide_promotion(collapsed, regression(), PromotionConfig())
    assert not refused.promote
    assert any(r.startswith("answers shrank 42% against round 0's (29 against 50 words") for r in refused.reasons)
    grown = pairwise(0.8, unconstrained=unconstrained(baseline_words=50, champion_words=55, challenger_words=70))
    assert any("answers grew 40%" in r for r in decide_promotion(grown, regression(), PromotionConfig()).reasons)
    # Within tolerance passes, saying so.
    steady = pairwise(0.8, unconstrained=unconstrained(baseline_words=50, champion_words=48, challenger_words=42))
    decision = decide_promotion(steady, regression(), PromotionConfig())
    assert decision.promote and any("answer length within bounds of round 0's: -16%" in r for r in decision.reasons)
    # A wider tolerance, or none, lets the collapsed one through; no round-0 answers, no check.
    assert decide_promotion(collapsed, regression(), PromotionConfig(max_length_drift=0.5)).promote
    assert decide_promotion(collapsed, regression(), PromotionConfig(max_length_drift=None)).promote
    unknown = pairwise(0.8, unconstrained=unconstrained(baseline_words=None, champion_words=30, challenger_words=10))
    assert list(keeps_its_length(unknown, PromotionConfig())) == []
    assert list(keeps_its_length(pairwise(0.8), PromotionConfig())) == []


def test_more_failure_modes_on_unconstrained_prompts_are_refused():
    gamed = pairwise(0.8, champion_any=0.1, challenger_any=0.1,
                     unconstrained=unconstrained(50, 50, 48, champion_any=0.05, challenger_any=0.40))
    refused = decide_promotion(gamed, regression(), PromotionConfig())
    assert not refused.promote
    assert any("40% of answers to unconstrained prompts show one, against 5%" in r for r in refused.reasons)


def test_without_a_challenger_the_decision_says_why():
    why = "no challenger: training stopped at step 3: the loss diverged (grad_norm not finite)"
    decision = decide_promotion(None, None, PromotionConfig(), not_trained=why)
    assert not decision.promote and decision.reasons == [why]


def with_unseen(result: PairwiseResult, before: float, after: float, low: float, high: float, prompts: int = 200) -> PairwiseResult:
    """``result`` with the unseen types' satisfaction moving ``before`` → ``after``, its paired interval [low, high]."""
    return result.model_copy(update=dict(champion_unseen_rate=before, challenger_unseen_rate=after, n_unseen_prompts=prompts,
                                         unseen_change_low=low, unseen_change_high=high))


@pytest.mark.parametrize(
    "after, low, high, promote, fragment",
    [
        # -8 points, interval -11..-5 (±3): clear of 0 and tight enough: refused.
        (0.32, -0.11, -0.05, False, "lost on the unseen instruction types"),
        # The same drop, interval -18..+2: not clear of 0.
        (0.32, -0.18, 0.02, True, "not deciding"),
        # -8 points clear of 0 but ±7: too wide to decide (the proof's 128 prompts), so reported, not blocking.
        (0.32, -0.15, -0.01, True, "not deciding"),
        # -11 points, ±6.7 (the proof's seed 2, round 1): wide, but all of it beyond the 2-point margin: refused.
        (0.29, -0.18, -0.046, False, "its whole interval beyond that"),
        # -1 point, clear of 0 (a tight interval): within the 2-point margin.
        (0.39, -0.015, -0.005, True, "kept the unseen instruction types"),
        # A gain.
        (0.45, 0.02, 0.08, True, "kept the unseen instruction types"),
    ],
)
def test_a_challenger_that_loses_on_unseen_types_is_refused_once_the_interval_decides(after, low, high, promote, fragment):
    decision = decide_promotion(with_unseen(pairwise(0.8), 0.40, after, low, high), regression(), PromotionConfig())
    assert decision.promote is promote, decision.reasons
    [reason] = [r for r in decision.reasons if "unseen" in r]
    assert fragment in reason and "over 200 prompts" in reason, reason


def test_the_unseen_check_is_silent_without_unseen_types_and_when_off():
    assert not [r for r in decide_promotion(pairwise(0.8), regression(), PromotionConfig()).reasons if "unseen" in r]
    dropped = with_unseen(pairwise(0.8), 0.40, 0.30, -0.13, -0.07)
    assert decide_promotion(dropped, regression(), PromotionConfig(max_unseen_drop=None)).promote
    # A wider decisive half-width turns the check on for a smaller held-out set.
    wide = with_unseen(pairwise(0.8), 0.40, 0.32, -0.15, -0.01)
    assert not decide_promotion(wide, regression(), PromotionConfig(unseen_decisive_half_width=0.08)).promote


def test_a_challenger_that_did_not_learn_must_win_by_a_stricter_bar():
    stalled = [Alarm(name="not_learning", message="reward accuracy 0.00 over the last 3 steps is below 0.55")]
    # Lower end 0.52: clears the 0.5 bar, not the 0.55 one a not_learning challenger must clear.
    narrow = decide_promotion(pairwise(0.62), regression(), PromotionConfig(), stalled)
    assert not narrow.promote
    assert any("not_learning and the win is not clear enough" in r and "0.520 <= 0.550" in r for r in narrow.reasons), narrow.reasons
    # Without the alarm the same win is promoted; with a clear win the alarm is only recorded.
    assert decide_promotion(pairwise(0.62), regression(), PromotionConfig()).promote
    clear = decide_promotion(pairwise(0.7), regression(), PromotionConfig(), stalled)
    assert clear.promote and any("but the win is clear" in r for r in clear.reasons), clear.reasons
    # The point bound does not loosen it; None turns it off; a blocking not_learning blocks alone.
    assert not decide_promotion(pairwise(0.62), regression(), PromotionConfig(win_rate_bound="point"), stalled).promote
    assert decide_promotion(pairwise(0.62), regression(), PromotionConfig(not_learning_min_win_rate=None), stalled).promote
    blocking = decide_promotion(pairwise(0.7), regression(), PromotionConfig(blocking_alarms=["not_learning"]), stalled)
    assert not blocking.promote and not any("not_learning_min_win_rate" in r for r in blocking.reasons)
