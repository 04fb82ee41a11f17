"""`filter`: which judged pairs are kept for training."""

from __future__ import annotations

from pydantic import Field

from infra.settings.base import Section


class FilterConfig(Section):
    similarity_threshold: float = Field(
        0.88, ge=0, le=1, description="Pairs whose responses are more similar than this (difflib ratio) are dropped."
    )
    min_chars: int = Field(10, ge=0, description="Responses shorter than this (stripped) are near-empty and dropped.")
    drop_truncated_chosen: bool = Field(
        True,
        description="Drop pairs whose chosen response hit generate.max_new_tokens without EOS (it would teach the "
        "policy to stop mid-thought); the prompt keeps its best pair with a finished winner. False only for tests on "
        "a random model that never ends.",
    )
    max_length_ratio: float | None = Field(
        None,
        gt=1,
        description="Cap on length bias: when set, the pairs where chosen is longest are dropped until "
        "mean chosen length / mean rejected length <= this.",
    )
