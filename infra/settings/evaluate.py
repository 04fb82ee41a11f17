"""`evaluate`: the pairwise eval of challenger against champion."""

from __future__ import annotations

from pydantic import Field

from infra.settings.base import Section


class EvalConfig(Section):
    judge: str | None = Field(None, description="Registered judge for the pairwise eval (default: judge.name).")
    max_new_tokens: int = Field(
        160, ge=1, description="Tokens per evaluation response at most (as generate.max_new_tokens, measured there)."
    )
    temperature: float = Field(
        0.0, ge=0, description="0 decodes greedily, so both policies are compared on their most likely answer."
    )
    batch_size: int = Field(
        48, ge=1, description="Sequences decoded together in the pairwise eval, each policy in turn; memory grows with it "
        "and with evaluate.max_new_tokens, as for generate.batch_size.",
    )
    bootstrap_samples: int = Field(
        2000, ge=100, description="Resamples over the held-out prompts for the win rate's 95% interval, whose lower end "
        "promotion.win_rate_bound 'lower' compares with promotion.min_win_rate; more give a steadier bound, at little cost.",
    )
    n_unconstrained: int = Field(
        48, ge=0,
        description="Everyday requests with nothing to check (tasks/data/unconstrained.jsonl, 80 of them; all "
        "when more are asked) that both policies answer too: their length (mean, quartiles), every failure mode's "
        "rate and, with a model judge (evaluate.judge or judge.name 'openai'), a win rate. The round-0 policy's "
        "answers are generated once and cached, for promotion.max_length_drift. 0 disables.",
    )
    seed: int = Field(0, description="Seed of sampling (when temperature > 0) and of the bootstrap.")
