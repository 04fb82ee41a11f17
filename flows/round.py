"""One self-play DPO round as a Prefect flow.

generate candidates -> judge -> filter -> train -> pairwise eval ->
capability-regression check -> promote or reject.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.summary import RoundSummary
from infra.artifacts import open_store
from infra.context import RoundContext
from infra.models import resolve_checkpoint
from infra.settings import FlywheelConfig
from infra.tracking import Tracker
from tasks.evaluate import evaluate_pairwise_task
from tasks.filter import filter_pairs_task
from tasks.generate import generate_candidates_task
from tasks.judge import judge_pairs_task
from tasks.promote import read_champion, promote_task
from tasks.prompts import select_prompts_task
from tasks.regression import check_regression_task
from tasks.train import train_policy_task

MIN_PAIRS = 2


def round_run_name(loop: str, round_index: int) -> str:
    return f"{loop}-round-{round_index:03d}"


def history_key(loop: str) -> str:
    return f"{loop}/history.json"


def read_history(store, loop: str) -> list[RoundSummary]:
    return [RoundSummary.model_validate(r) for r in store.read_json(history_key(loop)) or []]


def next_round_index(store, loop: str) -> int:
    return max((r.round for r in read_history(store, loop)), default=0) + 1


@flow(name="flywheel-round", log_prints=True)
def run_round(config: FlywheelConfig, round_index: int) -> RoundSummary:
    """Run one round from the current champion and record the decision."""
    store = open_store(config.storage.resolved_artifact_root())
    tracker = Tracker.from_config(config)
    ctx = RoundContext(config=config, round_index=round_index, store=store, tracker=tracker)
    champion = read_champion(store, config.loop, resolve_checkpoint(config.model.base, ctx.data_dir))
    tracker.start_round(config.loop, round_index, config)
    tracker.set_tags({"flywheel.champion_round": str(champion.round), "prefect.flow_run_id": str(flow_run.id)})
    try:
        prompts_key = select_prompts_task(ctx)
        candidates_key = generate_candidates_task(ctx, champion.checkpoint, prompts_key)
        judgments_key = judge_pairs_task(ctx, prompts_key, candidates_key)
        pairs_key, filter_report = filter_pairs_task(ctx, prompts_key, candidates_key, judgments_key)
        train_result = pairwise = regression = challenger = None
        if filter_report.n_kept >= MIN_PAIRS:
            train_key, train_result = train_policy_task(ctx, champion.checkpoint, pairs_key)
            challenger = str(store.local_path(train_key) / "merged")
            _, pairwise = evaluate_pairwise_task(ctx, champion.checkpoint, challenger, prompts_key)
            regression = check_regression_task(ctx, champion.checkpoint, challenger)
        else:
            get_run_logger().warning("only %d pairs kept (< %d): no training this round", filter_report.n_kept, MIN_PAIRS)
        decision = promote_task(ctx, pairwise, regression, challenger)
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
        constraint_rate_champion=pairwise.champion_constraint_rate if pairwise else None,
        constraint_rate_challenger=pairwise.challenger_constraint_rate if pairwise else None,
        regression_deltas={t.task: t.delta for t in regression.tasks} if regression else {},
        promoted=decision.promote,
        reasons=decision.reasons,
        artifacts=store.uri(f"{config.loop}/round-{round_index:03d}"),
    )
    store.write_json(history_key(config.loop), [r.model_dump() for r in read_history(store, config.loop) if r.round != round_index] + [summary.model_dump()])
    tracker.end_round("FINISHED")
    return summary
