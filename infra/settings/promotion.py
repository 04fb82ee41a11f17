"""`promotion`: the gate a challenger must pass to become the champion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.settings.base import Section


class PromotionConfig(Section):
    min_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The challenger must beat this win rate (ties count half) against the champion; which end "
        "of the estimate must beat it is win_rate_bound.",
    )
    win_rate_bound: Literal["lower", "point"] = Field(
        "lower",
        description="'lower': the win rate's 95% interval (bootstrap over prompts) must lie above min_win_rate, so "
        "a win is more than a coin flip (prompts.n_eval sizes the interval); 'point': the win rate itself must.",
    )
    max_length_drift: float | None = Field(
        0.25, gt=0,
        description="Largest accepted change of the mean answer length on the unconstrained prompts against the "
        "ROUND-0 policy (0.25 = within +-25% of its mean words), so length drift cannot add up round by round. "
        "None disables; no check when evaluate.n_unconstrained is 0.",
    )
    require_regression_pass: bool = Field(True, description="Block promotion when a benchmark drops beyond tolerance.")
    require_length_controlled_win: bool = Field(
        True,
        description="A challenger whose answers are longer on average must beat min_win_rate at equal length "
        "too (length-controlled win rate): no promotion for winning by length.",
    )
    max_failure_increase: float = Field(
        0.05, ge=0, le=1,
        description="Largest accepted rise in the share of answers showing any failure mode (tasks/failure_modes.py), "
        "on the held-out prompts and, apart, on the unconstrained prompts.",
    )
    max_unseen_drop: float | None = Field(
        0.02, ge=0, le=1,
        description="Largest accepted drop of held-out satisfaction on the unseen constraint types (prompts.unseen_types; "
        "challenger minus champion, absolute: 0.02 = 2 points). A larger drop whose paired 95% interval lies wholly "
        "below 0 refuses the challenger when that interval is tight enough to decide (unseen_decisive_half_width) "
        "or lies wholly below -max_unseen_drop, however wide; the reasons say which case applied. None disables; no check without unseen types.",
    )
    unseen_decisive_half_width: float = Field(
        0.05, gt=0, le=1,
        description="Half-width (in rate, 0.05 = 5 points) of the unseen-type change's paired 95% interval at or below "
        "which max_unseen_drop decides; a wider interval (too few held-out prompts carry an unseen type: prompts.n_eval) "
        "is reported and does not block, unless all of it lies below -max_unseen_drop.",
    )
    not_learning_min_win_rate: float | None = Field(
        0.55, ge=0, le=1,
        description="A challenger whose training raised not_learning (when it is not in blocking_alarms) is promoted only "
        "if its win rate's 95% interval's lower end is above this too, whatever win_rate_bound says: its own diagnostics "
        "say it learnt little, so its win must be clearer. None: no stricter bar.",
    )
    blocking_alarms: list[str] = Field(
        ["reference_mismatch", "over_optimization"],
        description="Training alarms that block promotion (of reference_mismatch, not_learning, overfitting, "
        "same_direction_drift, over_optimization; thresholds in train.diagnostics); the others are recorded and shown.",
    )
