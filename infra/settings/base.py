"""What every config section shares: unknown keys refused, assignments checked; and the per-round schedules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def per_round(values: list[float], round_index: int) -> float:
    """The schedule's value for ``round_index`` (1-based); the last value repeats."""
    return values[min(round_index - 1, len(values) - 1)]
