"""promote: the gate that decides whether the challenger becomes champion.

Reads: the pairwise result and the regression result.
Writes: ``decision.json``; when promoted, moves the loop's champion pointer
(``<loop>/champion.json``) to the new checkpoint. A rejected round leaves the
champion untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

from pydantic import BaseModel

from infra.settings import PromotionConfig

if TYPE_CHECKING:
    from tasks.diagnostics import Alarm
    from tasks.evaluate import PairwiseResult
    from tasks.regression import RegressionResult


class Decision(BaseModel):
    promote: bool
    reasons: list[str]


class Champion(BaseModel):
    """Where the loop's current best policy lives."""

    checkpoint: str  # the base policy's path or hub id, or the URI of a promoted merged checkpoint
    round: int  # 0 is the base policy
    train_key: str | None = None  # the train stage whose merged/ folder holds a promoted policy
    model_version: str | None = None  # its version in the MLflow registry
    promoted_at: str = ""

    def local_checkpoint(self, store, data_dir) -> str:
        """A path (or hub id) this machine can load the champion from; an S3 stage is downloaded once,
        the bundled base model converted once."""
        from infra.models import resolve_checkpoint

        if self.train_key:
            return str(store.local_path(self.train_key) / "merged")
        return resolve_checkpoint(self.checkpoint, data_dir)


class Check(NamedTuple):
    """One finding of the gate: ``ok`` is False when it blocks promotion."""

    ok: bool
    reason: str


def wins_pairwise(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """The challenger beats the champion's bar on the raw win rate (ties count half)."""
    record = f"{pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L"
    if pairwise.win_rate > config.min_win_rate:
        yield Check(True, f"won the pairwise eval: win rate {pairwise.win_rate:.3f} > {config.min_win_rate:.3f} "
                          f"(95% CI {pairwise.win_rate_low:.3f}-{pairwise.win_rate_high:.3f}; {record})")
    else:
        yield Check(False, f"did not win the pairwise eval: win rate {pairwise.win_rate:.3f} <= {config.min_win_rate:.3f} "
                           f"({record})")


def wins_at_equal_length(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """At equal length the challenger still beats the bar (``require_length_controlled_win``).

    The guard is against winning by being longer. A challenger that got shorter and wins loses
    nothing to a judge's verbosity bias, and where the prompts ask for brevity (word limits) its
    length is part of why it wins, which regressing length out would wrongly discount."""
    lc, before, after = pairwise.lc_win_rate, pairwise.champion_mean_words, pairwise.challenger_mean_words
    if not config.require_length_controlled_win or math.isnan(lc) or lc > config.min_win_rate:
        return
    if after < before:  # False when either is unknown (nan)
        yield Check(True, f"length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f} not held against it: "
                          f"its answers are shorter ({after:.0f} against {before:.0f} words on average)")
    else:
        what = "wins by length, not quality: " if pairwise.win_rate > config.min_win_rate else ""
        yield Check(False, f"{what}length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f}")


def no_more_failure_modes(pairwise: PairwiseResult, config: PromotionConfig) -> Iterator[Check]:
    """The share of answers showing any failure mode rises by at most ``max_failure_increase``."""
    before, after = pairwise.champion_failure_rates.get("any"), pairwise.challenger_failure_rates.get("any")
    if before is None or after is None or after - before <= config.max_failure_increase:
        return
    champion_rates = pairwise.champion_failure_rates
    worse = [m for m, r in pairwise.challenger_failure_rates.items() if m != "any" and r > champion_rates.get(m, 0)]
    yield Check(False, f"more failure modes: {after:.0%} of answers show one, against {before:.0%} for the champion "
                       f"(allowed rise {config.max_failure_increase:.0%}; worse: {', '.join(worse)})")


def passes_regression(regression: RegressionResult | None, config: PromotionConfig) -> Iterator[Check]:
    """No benchmark dropped beyond tolerance; blocking only when ``require_regression_pass``."""
    enforced = config.require_regression_pass
    if regression is None:
        if enforced:
            yield Check(False, "capability-regression check did not run")
    elif regression.passed:
        yield Check(True, "passed the capability-regression check")
    else:
        # A failed result always names its tasks; the fallback keeps a refusal from going unexplained.
        yield from (Check(not enforced, r) for r in regression.reasons or ["failed the capability-regression check"])
        if not enforced:
            yield Check(True, "regression not enforced (promotion.require_regression_pass is false)")


def no_blocking_alarm(alarms: list[Alarm], config: PromotionConfig) -> Iterator[Check]:
    """Every training alarm is shown; those in ``blocking_alarms`` block."""
    for alarm in alarms:
        if alarm.name in config.blocking_alarms:
            yield Check(False, f"training alarm {alarm.name}: {alarm.message}")
        else:
            yield Check(True, f"training alarm {alarm.name} (not blocking): {alarm.message}")


def decide_promotion(
    pairwise: PairwiseResult | None,
    regression: RegressionResult | None,
    config: PromotionConfig,
    alarms: list[Alarm] | None = None,
) -> Decision:
    """Promote only if the challenger wins the pairwise eval (at equal length too, unless it got
    shorter), shows no more failure modes, passes the regression check and raised no blocking
    training alarm. ``pairwise`` is None when no challenger was trained, ``regression`` when it did not run."""
    if pairwise is None:
        return Decision(promote=False, reasons=["no challenger was trained this round"])
    checks = [
        *wins_pairwise(pairwise, config),
        *wins_at_equal_length(pairwise, config),
        *no_more_failure_modes(pairwise, config),
        *passes_regression(regression, config),
        *no_blocking_alarm(alarms or [], config),
    ]
    return Decision(promote=all(c.ok for c in checks), reasons=[c.reason for c in checks])


def new_champion(store, train_key: str, round_index: int) -> Champion:
    return Champion(
        checkpoint=store.uri(train_key) + "/merged",
        round=round_index,
        train_key=train_key,
        promoted_at=datetime.now(timezone.utc).isoformat(),
    )


# --- Prefect task -----------------------------------------------------------------------

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from infra.retries import TRANSIENT_RETRIES  # noqa: E402


def registered_model_name(config) -> str:
    return config.storage.registered_model or f"{config.loop}-policy"


def code_version() -> str:
    """The git commit of the running code (with '-dirty' for local changes), else the package version."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "flywheel-" + version("flywheel")
        except PackageNotFoundError:
            return "unknown"


def lineage_tags(ctx, champion: Champion) -> dict[str, str]:
    """Where a promoted policy came from: enough to rebuild or audit it."""
    train_key = champion.train_key or ""
    return {
        "flywheel.loop": ctx.loop,
        "flywheel.round": str(champion.round),
        "flywheel.train_key": train_key,
        "flywheel.merged_uri": champion.checkpoint,
        "flywheel.adapter_uri": ctx.store.uri(train_key) + "/adapter",
        "flywheel.round_uri": ctx.store.uri(f"{ctx.loop}/round-{champion.round:03d}"),
        "flywheel.config_hash": ctx.config_hash(*type(ctx.config).model_fields),
        "flywheel.code_version": code_version(),
        "flywheel.started_from": ctx.champion_id,
    }


def champion_from_tags(tags: dict[str, str]) -> Champion:
    return Champion(checkpoint=tags["flywheel.merged_uri"], round=int(tags["flywheel.round"]), train_key=tags["flywheel.train_key"])


def champion_key(loop: str) -> str:
    return f"{loop}/champion.json"


def read_champion(store, loop: str, base_checkpoint: str) -> Champion:
    """The loop's champion, or the base policy (round 0) when nothing was promoted yet."""
    found = store.read_json(champion_key(loop))
    return Champion.model_validate(found) if found else Champion(checkpoint=base_checkpoint, round=0)


def current_champion(store, tracker, config) -> Champion:
    """The loop's champion now: the registry's alias is the source of truth; the store's pointer
    serves when it has none."""
    tags = tracker.champion_tags(registered_model_name(config))
    return champion_from_tags(tags) if tags else read_champion(store, config.loop, config.model.base)


@task(name="promote", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def promote_task(ctx, pairwise, regression, challenger_key: str | None, alarms: list | None = None) -> Decision:
    """Apply the gate; move the champion pointer only when the challenger passes it."""
    decision = decide_promotion(pairwise, regression, ctx.config.promotion, alarms)
    with ctx.store.stage(ctx.key("promote")) as out:
        (out / "decision.json").write_text(decision.model_dump_json(indent=2))
    if decision.promote and challenger_key:
        champion = new_champion(ctx.store, challenger_key, ctx.round_index)
        version = ctx.tracker.register_champion(
            registered_model_name(ctx.config),
            ctx.store.local_path(challenger_key) / "adapter",
            lineage_tags(ctx, champion),
        )
        ctx.store.write_json(champion_key(ctx.loop), champion.model_copy(update={"model_version": version}).model_dump())
    ctx.tracker.log_metrics({"promote/promoted": float(decision.promote)})
    ctx.tracker.set_tags({"flywheel.decision": "promoted" if decision.promote else "rejected"})
    return decision
