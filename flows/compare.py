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
from pydantic import BaseModel

from flows.publish import artifact_key
from flows.render import as_markdown
from flows.rows import comparison_rows, figure_table
from infra import layout
from infra.champion import current_champion, local_checkpoint, policy_of_round
from infra.retries import call_with_retries
from infra.settings import FlywheelConfig
from infra.store_factory import store_from_config
from infra.tracking import Tracker
from tasks.evaluate import Example, PairwiseResult
from tasks.regression import RegressionResult


class CompareError(ValueError):
    """The rounds asked for cannot be compared; the message says why."""


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


def comparison_markdown(c: Comparison) -> str:
    return "\n".join([
        f"# {c.loop}: round {c.challenger_round} against round {c.baseline_round}",
        "",
        f"{c.n_prompts} held-out prompts, each judged in both orders. Artifacts: `{c.artifacts}`",
        "",
        as_markdown(figure_table(comparison_rows(c))),
    ])


def examples_markdown(best: list[Example], worst: list[Example], later: int, earlier: int) -> str:
    """The telling examples side by side, as the compare stage's ``examples.md`` and the CLI print them."""
    def block(title: str, examples: list[Example]) -> list[str]:
        lines = [f"## {title}", ""]
        for e in examples:
            lines += [f"**{e.prompt}**", "",
                      f"- round {earlier} (constraints met {e.before_score:.0%}): {e.before}",
                      f"- round {later} (constraints met {e.after_score:.0%}, judged a {e.outcome}): {e.after}", ""]
        return lines

    return "\n".join(block(f"Where round {later} gained most", best) + block(f"Where round {later} lost most", worst))


@flow(name="flywheel-compare", flow_run_name="{config.loop}-compare")
def compare_rounds(config: FlywheelConfig, baseline_round: int = 0, challenger_round: int | None = None) -> Comparison:
    """The champion (or ``challenger_round``'s policy) against ``baseline_round``'s policy."""
    from prefect.artifacts import create_markdown_artifact

    from flows.stages import baseline_answers, regression_between
    from tasks.evaluate import pairwise_between, pairwise_metrics, telling_examples, write_pairwise
    from tasks.prompts import load_prompts, select_prompts, unconstrained_prompts

    store = store_from_config(config.storage)
    tracker = Tracker.from_config(config)
    challenger = current_champion(store, tracker, config) if challenger_round is None else policy_of_round(store, config, challenger_round)
    baseline = policy_of_round(store, config, baseline_round)
    if challenger.round == baseline.round:
        raise CompareError(f"nothing to compare: the challenger is round {challenger.round}'s policy, the baseline too")
    prompts = select_prompts(load_prompts(config.prompts, config.storage.data_dir), "eval", config.prompts.n_eval, seed=config.prompts.seed)
    key = layout.comparison_key(config.loop, challenger.round, baseline.round)
    name = key.rsplit("/", 1)[-1]
    tracker.start_run(f"{config.loop}-compare-{name}", {"flywheel.loop": config.loop, "flywheel.compare": name}, config)
    try:
        # "champion" in the records is the baseline policy, "challenger" the later one.
        before, after = ((local_checkpoint(who, store, config.storage.data_dir), who.checkpoint) for who in (baseline, challenger))
        everyday = unconstrained_prompts(config.evaluate.n_unconstrained, config.evaluate.seed)
        run = pairwise_between(prompts, before[0], after[0], config, store, unconstrained=everyday,
                               baseline=baseline_answers(store, config, everyday))
        result = run.result
        # The same benchmarks and tolerance as the promotion gate: drops that each round's gate let
        # through one at a time must not add up to one it would refuse.
        _, _, regression = regression_between(store, config, before, after)
        best, worst = telling_examples(prompts, run.completions, run.verdicts)
        with store.stage(key) as out:
            write_pairwise(out, run)
            (out / layout.REGRESSION_RESULT).write_text(regression.model_dump_json(indent=2))
            (out / layout.EXAMPLES).write_text(examples_markdown(best, worst, challenger.round, baseline.round))
        metrics = {f"compare/{k}": v for k, v in pairwise_metrics(result).items()}
        metrics.update({f"compare/{t.task}/delta": t.delta for t in regression.tasks})
        metrics["compare/regression_passed"] = float(regression.passed)
        tracker.log_metrics(metrics)
    except BaseException:
        tracker.end_round("FAILED")
        raise
    comparison = Comparison(
        loop=config.loop, challenger_round=challenger.round, baseline_round=baseline.round, n_prompts=len(prompts),
        result=result, regression=regression, artifacts=store.uri(key), mlflow_run_id=tracker.run_id or "",
        best=best, worst=worst,
    )
    others = [c for c in read_comparisons(store, config.loop) if (c.challenger_round, c.baseline_round) != (challenger.round, baseline.round)]
    store.write_json(layout.comparisons_key(config.loop), [c.model_dump() for c in others + [comparison]])
    call_with_retries(
        "Prefect API: comparison artifact", create_markdown_artifact,
        key=artifact_key(f"{config.loop}-compare"), markdown=comparison_markdown(comparison),
        description=f"{config.loop}: round {challenger.round} against round {baseline.round}",
    )
    tracker.end_round("FINISHED")
    return comparison
