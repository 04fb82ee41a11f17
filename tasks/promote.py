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


def decide_promotion(pairwise, regression, config: PromotionConfig, alarms: list | None = None) -> Decision:
    """Promote only if the challenger wins the pairwise eval, passes the regression check and
    raised no blocking training alarm.

    ``pairwise`` is a PairwiseResult or None (no challenger trained); ``regression``
    a RegressionResult or None (not run); ``alarms`` the training diagnostics' Alarms.
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
    lc = getattr(pairwise, "lc_win_rate", float("nan"))
    champion_words = getattr(pairwise, "champion_mean_words", float("nan"))
    challenger_words = getattr(pairwise, "challenger_mean_words", float("nan"))
    # The guard is against winning by being longer. A challenger that got shorter and wins loses
    # nothing to a judge's verbosity bias, and where the prompts ask for brevity (word limits) its
    # length is part of why it wins, which regressing length out would wrongly discount.
    shorter = challenger_words < champion_words  # False when either is unknown (nan)
    if config.require_length_controlled_win and lc == lc and lc <= config.min_win_rate:
        if shorter:
            reasons.append(
                f"length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f} not held against it: "
                f"its answers are shorter ({challenger_words:.0f} against {champion_words:.0f} words on average)"
            )
        else:
            promote = False
            what = "wins by length, not quality: " if pairwise.win_rate > config.min_win_rate else ""
            reasons.append(f"{what}length-controlled win rate {lc:.3f} <= {config.min_win_rate:.3f}")
    before = getattr(pairwise, "champion_failure_rates", {}).get("any")
    after = getattr(pairwise, "challenger_failure_rates", {}).get("any")
    if before is not None and after is not None and after - before > config.max_failure_increase:
        promote = False
        worse = [m for m, r in pairwise.challenger_failure_rates.items() if m != "any" and r > pairwise.champion_failure_rates.get(m, 0)]
        reasons.append(
            f"more failure modes: {after:.0%} of answers show one, against {before:.0%} for the champion "
            f"(allowed rise {config.max_failure_increase:.0%}; worse: {', '.join(worse)})"
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
    for alarm in alarms or []:
        if alarm.name in config.blocking_alarms:
            promote = False
            reasons.append(f"training alarm {alarm.name}: {alarm.message}")
        else:
            reasons.append(f"training alarm {alarm.name} (not blocking): {alarm.message}")
    return Decision(promote=promote, reasons=reasons)


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
