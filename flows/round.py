"""One self-play DPO round as a Prefect flow.

generate candidates -> judge -> filter -> train -> evaluate (pairwise, against the champion) ->
capability-regression check -> promote or reject -> publish: the figures, the Prefect artifacts and,
last, the loop's history row (a round that has one is done; one killed before it is continued).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect import flow
from prefect.runtime import flow_run

from flows.exclusive import exclusive
from flows.generate_flow import generate_challenger_candidates
from flows.publish import publish_round
from flows.round_records import RoundSummary, append_history, read_history, with_round
from flows.stage_runner import RoundContext, StageResult
from flows.stages import (
    check_regression_task,
    evaluate_pairwise_task,
    figure_bytes,
    filter_pairs_task,
    judge_pairs_task,
    promote_task,
    select_prompts_task,
    write_figures_task,
)
from flows.train_flow import train_challenger
from infra import layout
from infra.champion import local_checkpoint, starting_champion
from infra.effective_config import save_effective_config
from infra.lease import hold_loop
from infra.ray_cluster import join_cluster, uses_ray
from infra.settings import FlywheelConfig
from infra.store_factory import store_from_config
from infra.tracking import Tracker
from tasks.config_checks import check_config

EXCLUSIVE_LIMIT = "flywheel-train-promote"


@flow(name="flywheel-round")
def run_round(config: FlywheelConfig, round_index: int) -> RoundSummary:
    """Run one round from the current champion and record the decision."""
    check_config(config, origin="the round's parameters")
    with open_round(config, round_index) as ctx:
        prompts = select_prompts_task(ctx)
        candidates = generate_challenger_candidates(ctx, prompts)
        judgments = judge_pairs_task(ctx, prompts, candidates)
        pairs = filter_pairs_task(ctx, prompts, candidates, judgments)
        # One loop at a time trains and promotes: two promotions racing would each
        # believe they beat the champion the other one replaced.
        with exclusive(EXCLUSIVE_LIMIT):
            challenger, not_trained = train_challenger(ctx, pairs)
            pairwise = evaluate_pairwise_task(ctx, challenger, prompts) if challenger else None
            regression = check_regression_task(ctx, challenger) if challenger else None
            decision = promote_task(ctx, challenger, pairwise, regression, not_trained)
        summary = summarize_round(ctx, pairs, challenger, pairwise, regression, decision, candidates=candidates)
        history = with_round(read_history(ctx.store, config.loop), summary)
        figures = write_figures_task(ctx, challenger, history)
        publish_round(summary, history, figure_bytes(ctx, figures), ctx.tracker.uri)
        # The history row last: a round with one is done (next_round_index), so a round killed
        # before it is continued, never skipped nor recorded twice.
        append_history(ctx.store, summary)
    return summary


@contextlib.contextmanager
def open_round(config: FlywheelConfig, round_index: int) -> Iterator[RoundContext]:
    """The round's context: store, tracker (a new MLflow run) and the champion it starts from; the
    effective config is saved with the round; the MLflow run ends FAILED if the round fails."""
    store = store_from_config(config.storage)
    tracker = Tracker.from_config(config)
    champion = starting_champion(store, tracker, config, round_index)
    ctx = RoundContext(config=config, round_index=round_index, store=store, tracker=tracker, champion=champion,
                       champion_checkpoint=local_checkpoint(champion, store, config.storage.data_dir))
    tracker.start_round(config.loop, round_index, config)
    tracker.set_tags({"flywheel.champion_round": str(champion.round), "prefect.flow_run_id": str(flow_run.id)})
    if uses_ray(config):
        cluster = join_cluster(config.ray)
        tracker.set_tags({"ray.address": cluster.address, "ray.job_id": cluster.job_id})
    if config.train.adopted_ablation is not None:  # the settings came from `flywheel loop --adopt-ablation N`
        tracker.set_tags({"flywheel.adopted_ablation": str(config.train.adopted_ablation)})
    try:
        save_effective_config(config, store, tracker, ctx.key(layout.CONFIG))
        yield ctx
    except BaseException:
        tracker.end_round("FAILED")
        raise
    tracker.end_round("FINISHED")


def summarize_round(ctx: RoundContext, pairs: StageResult, challenger: StageResult | None, pairwise: StageResult | None,
                    regression: StageResult | None, decision: StageResult,
                    candidates: StageResult | None = None) -> RoundSummary:
    return RoundSummary.from_results(
        ctx.loop, ctx.round_index,
        flow_run_id=str(flow_run.id or ""),
        mlflow_run_id=ctx.tracker.run_id or "",
        mlflow_experiment_id=ctx.tracker.experiment_id,
        champion_round=ctx.champion.round,
        filter_report=pairs.result,
        train=challenger.result if challenger else None,
        pairwise=pairwise.result if pairwise else None,
        regression=regression.result if regression else None,
        decision=decision.result,
        artifacts=ctx.store.uri(layout.round_key(ctx.loop, ctx.round_index)),
        generate=candidates.result if candidates else None,
        ray=join_cluster(ctx.config.ray)._asdict() if uses_ray(ctx.config) else None,
    )


def next_round_index(store, loop: str) -> int:
    return max((r.round for r in read_history(store, loop)), default=0) + 1


def run_next_round(config: FlywheelConfig) -> RoundSummary:
    """The loop's next round as its own flow run, named ``<loop>-round-NNN``. The loop's lease is
    held from choosing the number to the end, so two processes never run the same round."""
    store = store_from_config(config.storage)
    with hold_loop(store, config.loop, config.storage.loop_wait_s, config.storage.loop_lease_s):
        index = next_round_index(store, config.loop)
        return run_round.with_options(flow_run_name=layout.round_run_name(config.loop, index))(config=config, round_index=index)

