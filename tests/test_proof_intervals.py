"""The mean-over-seeds interval (flows/proof_intervals.py): one seed gives the round's paired
bootstrap, seeds that disagree widen it, and figures are pooled as the eval pools them."""

from __future__ import annotations

import numpy as np
import pytest

from flows.proof_intervals import change_per_prompt, outcome_per_prompt, seeds_and_prompts_interval
from tasks.evaluate import PairVerdict, paired_change_interval


def _seed(rng, n, p_before, p_after):
    before = {f"p{i}": (int(rng.random() < p_before), 1) for i in range(n)}
    after = {f"p{i}": (int(rng.random() < p_after), 1) for i in range(n)}
    return before, after


def test_one_seed_is_the_paired_bootstrap():
    before, after = _seed(np.random.default_rng(0), 300, 0.4, 0.5)
    low, high = seeds_and_prompts_interval([change_per_prompt(before, after)], 4000, 1)
    paired_low, paired_high = paired_change_interval(before, after, 4000, 1)
    change = (sum(a for a, _ in after.values()) - sum(b for b, _ in before.values())) / 300
    assert low < change < high
    assert low == pytest.approx(paired_low, abs=0.01) and high == pytest.approx(paired_high, abs=0.01)


def test_seeds_that_disagree_widen_the_interval_and_agreeing_ones_do_not():
    rng = np.random.default_rng(1)
    seeds = [change_per_prompt(*_seed(rng, 300, 0.4, p)) for p in (0.3, 0.4, 0.6)]
    same = [seeds[1]] * 3
    low, high = seeds_and_prompts_interval(seeds, 4000, 2)
    one_low, one_high = seeds_and_prompts_interval([seeds[1]], 4000, 2)
    same_low, same_high = seeds_and_prompts_interval(same, 4000, 2)
    assert high - low > 2 * (one_high - one_low), "three disagreeing seeds gave an interval as narrow as one seed's"
    assert same_low == pytest.approx(one_low, abs=0.01) and same_high == pytest.approx(one_high, abs=0.01)


def test_the_pooled_figure_weights_prompts_by_their_constraints():
    # p0 carries 3 constraints (all newly met), p1 one (newly missed): pooled change +2/4 on every draw of both
    before = {"p0": (0, 3), "p1": (1, 1)}
    after = {"p0": (3, 3), "p1": (0, 1)}
    per_prompt = change_per_prompt(before, after)
    assert per_prompt == {"p0": (3, 3), "p1": (-1, 1)}
    low, high = seeds_and_prompts_interval([per_prompt], 2000, 0)
    assert -1.0 <= low < 0.5 < high <= 1.0  # draws of p1 alone give -1, of p0 alone +1


def test_outcomes_and_prompts_no_seed_shares():
    verdicts = [PairVerdict(prompt_id="a", forward="B", backward="A", outcome="win"),
                PairVerdict(prompt_id="b", forward="tie", backward="tie", outcome="tie")]
    assert outcome_per_prompt(verdicts) == {"a": (1.0, 1.0), "b": (0.5, 1.0)}
    assert seeds_and_prompts_interval([{"a": (1.0, 1.0)}, {"b": (0.0, 1.0)}], 100, 0) == (None, None)
    assert seeds_and_prompts_interval([], 100, 0) == (None, None)
