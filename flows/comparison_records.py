"""What ``flywheel compare`` measured, as one record per pair of rounds, and the loop's list of
them in ``<loop>/comparisons.json`` (the report reads it). How they are shown is
``flows/rows.py``'s and ``flows/publish.py``'s."""

from __future__ import annotations

from pydantic import BaseModel

from infra import layout
from tasks.evaluate import Example, PairwiseResult
from tasks.regression import RegressionResult


class Comparison(BaseModel):
    loop: str
    challenger_round: int
    baseline_round: int
    n_prompts: int
    result: PairwiseResult
    regression: RegressionResult | None = None  # the benchmarks of both, under the promotion gate's tolerance
    best: list[Example] = []  # held-out prompts where the later policy gained most: read them
    worst: list[Example] = []  # and where it lost most
    artifacts: str
    mlflow_run_id: str = ""


def read_comparisons(store, loop: str) -> list[Comparison]:
    return [Comparison.model_validate(c) for c in store.read_json(layout.comparisons_key(loop)) or []]


def record_comparison(store, comparison: Comparison) -> None:
    """Add ``comparison`` to its loop's list, replacing an earlier one of the same two rounds."""
    pair = (comparison.challenger_round, comparison.baseline_round)
    others = [c for c in read_comparisons(store, comparison.loop) if (c.challenger_round, c.baseline_round) != pair]
    store.write_json(layout.comparisons_key(comparison.loop), [c.model_dump() for c in others + [comparison]])
