"""One self-play DPO round as a Prefect flow.

generate candidates -> judge -> filter -> train -> pairwise eval ->
capability-regression check -> promote or reject.
"""

from __future__ import annotations

import contextlib

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.publish import publish_round
from flows.summary import RoundSummary
from flows.train_flow import dispatch_training
from infra.artifacts import store_from_config
from infra.context import RoundContext
from infra.settings import FlywheelConfig
from infra.tracking import Tracker
from tasks.evaluate import evaluate_pairwise_task
from tasks.filter import filter_pairs_task
from tasks.generate import generate_candidates_task
from tasks.judge import judge_pairs_task
from tasks.promote import Champion, current_champion, promote_task
from tasks.prompts import select_prompts_task
from tasks.regression import check_regression_task
from tasks.train import train_policy_task

MIN_PAIRS = 2
EXCLUSIVE_LIMIT = "flywheel-train-promote"


@contextlib.contextmanager
def exclusive(name: str):
    """Hold the one slot of a Prefect global concurrency limit (created on first use)."""
    from prefect import get_client
    from prefect.concurrency.sync import concurrency

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(name, occupy=1, strict=True):
        yield


def round_run_name(loop: str, round_index: int) -> str:
    return f"{loop}-round-{round_index:03d}"


def history_key(loop: str) -> str:
    return f"{loop}/history.json"


def read_history(store, loop: str) -> list[RoundSummary]:
    return [RoundSummary.model_validate(r) for r in store.read_json(history_key(loop)) or []]


def next_round_index(store, loop: str) -> int:
    return max((r.round for r in read_history(store, loop)), default=0) + 1


def starting_champion(store, tracker: Tracker, config: FlywheelConfig, round_index: int) -> Champion:
    """The champion this round starts from, pinned on its first run so a resumed round starts
    from the same policy even if a later round has moved the champion since."""
    key = f"{config.loop}/round-{round_index:03d}/champion_before.json"
    pinned = store.read_json(key)
    if pinned is not None:
        return Champion.model_validate(pinned)
    champion = current_champion(store, tracker, config)
    store.write_json(key, champion.model_dump())
    return champion


@flow(name="flywheel-round")
def run_round(config: FlywheelConfig, round_index: int) -> RoundSummary:
    """Run one round from the current champion and record the decision."""
    store = store_from_config(config.storage)
    tracker = Tracker.from_config(config)
    champion = starting_champion(store, tracker, config, round_index)
    ctx = RoundContext(config=config, round_index=round_index, store=store, tracker=tracker, champion_id=champion.checkpoint)
    champion_checkpoint = champion.local_checkpoint(store, ctx.data_dir)
    tracker.start_round(config.loop, round_index, config)
    tracker.set_tags({"flywheel.champion_round": str(champion.round), "prefect.flow_run_id": str(flow_run.id)})
    try:
        prompts_key = select_prompts_task(ctx)
        candidates_key = generate_candidates_task(ctx, champion_checkpoint, prompts_key)
        judgments_key = judge_pairs_task(ctx, prompts_key, candidates_key)
        pairs_key, filter_report = filter_pairs_task(ctx, prompts_key, candidates_key, judgments_key)
        train_result = pairwise = regression = train_key = None
        # One loop at a time trains and promotes: two promotions racing would each
        # believe they beat the champion the other one replaced.
        with exclusive(EXCLUSIVE_LIMIT):
            if filter_report.n_kept >= MIN_PAIRS:
                if config.train.deployment:
                    train_key, train_result = dispatch_training(ctx, champion, pairs_key)
                else:
                    train_key, train_result = train_policy_task(ctx, champion_checkpoint, pairs_key)
                _, pairwise = evaluate_pairwise_task(ctx, champion_checkpoint, train_key, prompts_key)
                regression = check_regression_task(ctx, champion_checkpoint, train_key)
            else:
                get_run_logger().warning("only %d pairs kept (< %d): no training this round", filter_report.n_kept, MIN_PAIRS)
            decision = promote_task(ctx, pairwise, regression, train_key, train_result.alarms if train_result else None)
    except BaseException:
        tracker.end_round("FAILED")
        raise
    summary = RoundSummary(
        loop=config.loop,
        round=round_index,
        flow_run_id=str(flow_run.id or ""),
        mlflow_run_id=tracker.run_id or "",
        champion_before=champion.round,
        pairs_kept=filter_report.n_kept,
        train_initial_loss=train_result.initial_loss if train_result else None,
        train_final_loss=train_result.final_loss if train_result else None,
        train_reward_accuracy=train_result.final_reward_accuracy if train_result else None,
        win_rate=pairwise.win_rate if pairwise else None,
        win_rate_low=pairwise.win_rate_low if pairwise else None,
        win_rate_high=pairwise.win_rate_high if pairwise else None,
        lc_win_rate=pairwise.lc_win_rate if pairwise and pairwise.lc_win_rate == pairwise.lc_win_rate else None,
        constraint_rate_champion=pairwise.champion_constraint_rate if pairwise else None,
        constraint_rate_challenger=pairwise.challenger_constraint_rate if pairwise else None,
        regression_deltas={t.task: t.delta for t in regression.tasks} if regression else {},
        alarms=[a.name for a in train_result.alarms] if train_result else [],
        promoted=decision.promote,
        reasons=decision.reasons,
        artifacts=store.uri(f"{config.loop}/round-{round_index:03d}"),
    )
    history = sorted([r for r in read_history(store, config.loop) if r.round != round_index] + [summary], key=lambda r: r.round)
    store.write_json(history_key(config.loop), [r.model_dump() for r in history])
    publish_round(summary, history, round_figures(ctx, train_key, history))
    tracker.end_round("FINISHED")
    return summary


def round_figures(ctx: RoundContext, train_key: str | None, history: list[RoundSummary]) -> dict[str, bytes]:
    """The round's PNGs: its training figure (written by the train stage) and the loop's figure
    across rounds so far, which is written to the round's artifacts and to MLflow here."""
    from tasks.figures import loop_figure

    figures = {}
    if train_key and (ctx.store.local_path(train_key) / "training.png").exists():
        figures["DPO training"] = (ctx.store.local_path(train_key) / "training.png").read_bytes()
    figures["across rounds"] = loop_figure(history)
    key = ctx.key("figures")
    with ctx.store.stage(key) as out:
        (out / "loop.png").write_bytes(figures["across rounds"])
    ctx.tracker.log_artifact(ctx.store.local_path(key) / "loop.png", "figures")
    return figures


def run_next_round(config: FlywheelConfig) -> RoundSummary:
    """The loop's next round as its own flow run, named ``<loop>-round-NNN``."""
    index = next_round_index(store_from_config(config.storage), config.loop)
    return run_round.with_options(flow_run_name=round_run_name(config.loop, index))(config=config, round_index=index)
