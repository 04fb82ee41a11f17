"""promote: the gate that decides whether the challenger becomes champion.

Reads: the pairwise result and the regression result.
Writes: ``decision.json``; when promoted, moves the loop's champion pointer
(``<loop>/champion.json``) to the new checkpoint. A rejected round leaves the
champion untouched.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel

from infra.settings import PromotionConfig


class Decision(BaseModel):
    promote: bool
    reasons: list[str]


class Champion(BaseModel):
    """Where the loop's current best policy lives."""

    checkpoint: str
    round: int  # 0 is the base policy
    promoted_at: str = ""


def decide_promotion(pairwise, regression, config: PromotionConfig) -> Decision:
    """Promote only if the challenger wins the pairwise eval and passes the regression check.

    ``pairwise`` is a PairwiseResult or None (no challenger trained); ``regression``
    a RegressionResult or None (not run).
    """
    reasons: list[str] = []
    promote = True
    if pairwise is None:
        return Decision(promote=False, reasons=["no challenger was trained this round"])
    if pairwise.win_rate > config.min_win_rate:
        reasons.append(
            f"won the pairwise eval: win rate {pairwise.win_rate:.3f} > {config.min_win_rate:.3f} "
            f"(95% CI {pairwise.win_rate_low:.3f}-{pairwise.win_rate_high:.3f}; "
            f"{pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L)"
        )
    else:
        promote = False
        reasons.append(
            f"did not win the pairwise eval: win rate {pairwise.win_rate:.3f} <= {config.min_win_rate:.3f} "
            f"({pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L)"
        )
    if regression is None:
        if config.require_regression_pass:
            promote = False
            reasons.append("capability-regression check did not run")
    elif regression.passed:
        reasons.append("passed the capability-regression check")
    else:
        reasons.extend(regression.reasons)
        if config.require_regression_pass:
            promote = False
        else:
            reasons.append("regression not enforced (promotion.require_regression_pass is false)")
    return Decision(promote=promote, reasons=reasons)


def new_champion(checkpoint: str, round_index: int) -> Champion:
    return Champion(checkpoint=checkpoint, round=round_index, promoted_at=datetime.now(timezone.utc).isoformat())


# --- Prefect task -----------------------------------------------------------------------

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402


def champion_key(loop: str) -> str:
    return f"{loop}/champion.json"


def read_champion(store, loop: str, base_checkpoint: str) -> Champion:
    """The loop's champion, or the base policy (round 0) when nothing was promoted yet."""
    found = store.read_json(champion_key(loop))
    return Champion.model_validate(found) if found else Champion(checkpoint=base_checkpoint, round=0)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(ctx, pairwise, regression, challenger_checkpoint: str | None) -> Decision:
    """Apply the gate; move the champion pointer only when the challenger passes it."""
    decision = decide_promotion(pairwise, regression, ctx.config.promotion)
    with ctx.store.stage(ctx.key("promote")) as out:
        (out / "decision.json").write_text(decision.model_dump_json(indent=2))
    if decision.promote and challenger_checkpoint:
        ctx.store.write_json(champion_key(ctx.loop), new_champion(challenger_checkpoint, ctx.round_index).model_dump())
    ctx.tracker.log_metrics({"promote/promoted": float(decision.promote)})
    ctx.tracker.set_tags({"flywheel.decision": "promoted" if decision.promote else "rejected"})
    return decision
