"""`flywheel compare`: the loop's champion against an earlier policy (round 0, the base model, by
default) on the held-out prompts, judged as the pairwise eval judges a round.

A round only ever meets the champion it started from, so small steps can each win by a little
while the sum of them is unknown; this measures the sum. Writes
``<loop>/compare/round-NNN-vs-round-MMM/`` (completions, verdicts, pairwise.json with the
seen and unseen constraint types' rates and the unconstrained prompts' figures, and
regression.json: both policies' benchmark scores under the promotion gate's tolerance), one MLflow run,
a Prefect markdown artifact, and adds the result to ``<loop>/comparisons.json`` for the report.
"""

from __future__ import annotations

from prefect import flow

from flows.answer_cache import baseline_answers, regression_between
from flows.comparison_records import Comparison, record_comparison
from flows.publish import examples_markdown, publish_comparison
from infra import layout
from infra.champion import current_champion, local_checkpoint, policy_of_round
from infra.ray_cluster import join_if_used
from infra.records import Champion, Prompt
from infra.settings import FlywheelConfig
from infra.store import ArtifactStore
from infra.store_factory import store_from_config
from infra.tracking import Tracker


class CompareError(ValueError):
    """The rounds asked for cannot be compared; the message says why."""


@flow(name="flywheel-compare", flow_run_name="{config.loop}-compare")
def compare_rounds(config: FlywheelConfig, baseline_round: int = 0, challenger_round: int | None = None) -> Comparison:
    """The champion (or ``challenger_round``'s policy) against ``baseline_round``'s policy."""
    from tasks.prompts import load_prompts, select_prompts

    store = store_from_config(config.storage)
    tracker = Tracker.from_config(config)
    join_if_used(config)  # generate.backend 'ray': the answers are sampled on config.ray's cluster
    challenger = current_champion(store, tracker, config) if challenger_round is None else policy_of_round(store, config, challenger_round)
    baseline = policy_of_round(store, config, baseline_round)
    if challenger.round == baseline.round:
        raise CompareError(f"nothing to compare: the challenger is round {challenger.round}'s policy, the baseline too")
    prompts = select_prompts(load_prompts(config.prompts, config.storage.data_dir), "eval", config.prompts.n_eval, seed=config.prompts.seed)
    key = layout.comparison_key(config.loop, challenger.round, baseline.round)
    name = key.rsplit("/", 1)[-1]
    tracker.start_run(f"{config.loop}-compare-{name}", {"flywheel.loop": config.loop, "flywheel.compare": name}, config)
    try:
        comparison = measure(store, config, prompts, baseline, challenger, key)
        tracker.log_metrics(comparison_metrics(comparison))
    except BaseException:
        tracker.end_round("FAILED")
        raise
    comparison = comparison.model_copy(update={"mlflow_run_id": tracker.run_id or ""})
    record_comparison(store, comparison)
    publish_comparison(comparison)
    tracker.end_round("FINISHED")
    return comparison


def measure(store: ArtifactStore, config: FlywheelConfig, prompts: list[Prompt], baseline: Champion, challenger: Champion,
            key: str) -> Comparison:
    """Both policies on the held-out prompts, judged pairwise, and on the benchmarks; the files
    written to ``key`` (whole or not at all)."""
    from tasks.evaluate import pairwise_between, telling_examples, write_pairwise
    from tasks.prompts import unconstrained_prompts

    # "champion" in the records is the baseline policy, "challenger" the later one.
    before, after = ((local_checkpoint(who, store, config.storage.data_dir), who.checkpoint) for who in (baseline, challenger))
    everyday = unconstrained_prompts(config.evaluate.n_unconstrained, config.evaluate.seed)
    run = pairwise_between(prompts, before[0], after[0], config, store, unconstrained=everyday,
                           baseline=baseline_answers(store, config, everyday))
    # The same benchmarks and tolerance as the promotion gate: drops that each round's gate let
    # through one at a time must not add up to one it would refuse.
    _, _, regression = regression_between(store, config, before, after)
    best, worst = telling_examples(prompts, run.completions, run.verdicts)
    with store.stage(key) as out:
        write_pairwise(out, run)
        (out / layout.REGRESSION_RESULT).write_text(regression.model_dump_json(indent=2))
        (out / layout.EXAMPLES).write_text(examples_markdown(best, worst, challenger.round, baseline.round))
    return Comparison(
        loop=config.loop, challenger_round=challenger.round, baseline_round=baseline.round, n_prompts=len(prompts),
        result=run.result, regression=regression, artifacts=store.uri(key), best=best, worst=worst,
    )


def comparison_metrics(comparison: Comparison) -> dict[str, float]:
    """What MLflow records of a comparison, as ``compare/<name>``."""
    from tasks.evaluate import pairwise_metrics

    metrics = {f"compare/{k}": v for k, v in pairwise_metrics(comparison.result).items()}
    metrics.update({f"compare/{t.task}/delta": t.delta for t in comparison.regression.tasks})
    metrics["compare/regression_passed"] = float(comparison.regression.passed)
    return metrics
