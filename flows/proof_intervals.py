"""The 95% interval of a figure's mean over the seeds, from the stored evaluations.

One seed's eval interval says how far its figure could move on other held-out prompts; the mean
over the seeds also moves with the seed (sampling, LoRA initialisation, data order). A
hierarchical bootstrap resamples both: each draw picks the seeds with replacement and the
held-out prompts with replacement (the same prompts for every seed drawn, since all seeds answer
the same held-out set), and recomputes the pooled figure. With one seed it is the round's own
paired bootstrap; with three it is wide where the seeds disagree, as it should be.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.evaluate import outcome_scores

# A seed's per-prompt contribution: {prompt id: (value, weight)}; the pooled figure is
# sum(value) / sum(weight) over the seeds and prompts drawn.
PerPrompt = dict[str, tuple[float, float]]


def seeds_and_prompts_interval(per_seed: Sequence[PerPrompt], n_samples: int, seed: int) -> tuple[float | None, float | None]:
    """95% percentile interval of the pooled figure over seeds and prompts both resampled; (None, None)
    when no prompt is common to every seed."""
    if not per_seed:
        return None, None
    ids = sorted(set.intersection(*(set(s) for s in per_seed)))
    if not ids:
        return None, None
    values = np.array([[s[i][0] for i in ids] for s in per_seed], dtype=float)
    weights = np.array([[s[i][1] for i in ids] for s in per_seed], dtype=float)
    rng = np.random.default_rng(seed)
    seeds_drawn = rng.integers(0, len(per_seed), size=(n_samples, len(per_seed), 1))
    prompts_drawn = rng.integers(0, len(ids), size=(n_samples, 1, len(ids)))
    totals = weights[seeds_drawn, prompts_drawn].sum(axis=(1, 2))
    figures = values[seeds_drawn, prompts_drawn].sum(axis=(1, 2)) / np.where(totals > 0, totals, np.nan)
    figures = figures[~np.isnan(figures)]
    if not len(figures):
        return None, None
    low, high = np.quantile(figures, [0.025, 0.975])
    return float(low), float(high)


def change_per_prompt(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> PerPrompt:
    """A seed's change of a satisfaction rate, per prompt: (constraints met after - before, constraints)."""
    return {i: (after[i][0] - before[i][0], before[i][1]) for i in before.keys() & after.keys()}


def outcome_per_prompt(verdicts) -> PerPrompt:
    """A seed's pairwise outcome per prompt: (1 win, 0.5 tie, 0 loss, as the eval scores it; 1)."""
    return {v.prompt_id: (float(score), 1.0) for v, score in zip(verdicts, outcome_scores(verdicts))}
