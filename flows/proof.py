"""`flywheel proof`: a round's effect over several seeds, with error bars.

For each seed k (0 .. seeds-1) the loop ``<loop>-seed<k>`` runs ``rounds`` rounds of the configured
recipe with ``generate.seed`` and ``train.seed`` moved by k (the candidates' sampling, the LoRA
initialisation, dropout and the order of the pairs); the prompts, the held-out split and the eval
stay the same, so the seeds differ only where training's randomness does. Each seed loop keeps its
own artifacts, MLflow runs and registered model; a seed loop that already has its rounds is read, not
run again, so a stopped proof continues where it stopped.

Writes ``<loop>/proof/seeds-<S>-rounds-<R>/``: ``proof.json`` (the ``ProofReport``) and ``proof.md``: every figure of the
round table as mean ± standard deviation and range over the seeds, beside the eval's own 95%
interval (the win rate's bootstrap, the seen/unseen change's paired bootstrap) and, for those three
figures, the mean's 95% interval with seeds and held-out prompts both resampled
(flows/proof_intervals.py); then, per seed, the
held-out split's size, the unrequested forms (titles, headings, postscripts, highlights) of round 0's
answers and of the seed's champion's, and its three best and three worst held-out answers.
"""

from __future__ import annotations

import math

from prefect import flow

from flows.proof_intervals import change_per_prompt, outcome_per_prompt, seeds_and_prompts_interval
from flows.proof_records import MetricRow, ProofReport, SeedRun, metric_rows, rows_table
from flows.publish import examples_markdown
from flows.render import as_markdown
from flows.round import run_next_round
from flows.round_records import read_history
from flows.table import Table
from infra import layout
from infra.records import Completion, Prompt, read_jsonl
from infra.settings import FlywheelConfig
from infra.store import ArtifactStore
from infra.store_factory import store_from_config
from tasks.evaluate import PairVerdict, PairwiseResult, met_by_prompt, telling_examples
from tasks.prompts import unseen_types
from tasks.unrequested_forms import FORMS, count_unrequested_forms

TYPICAL_RATE = 0.4  # held-out satisfaction of the embedded default today: the binomial half-widths are quoted at it


def seed_config(config: FlywheelConfig, seed: int) -> FlywheelConfig:
    """The config of seed ``seed``: loop ``<loop>-seed<k>``, sampling and training seeds moved by k."""
    return config.model_copy(update={
        "loop": f"{config.loop}-seed{seed}",
        "generate": config.generate.model_copy(update={"seed": config.generate.seed + seed}),
        "train": config.train.model_copy(update={"seed": config.train.seed + seed}),
    })


def proof_key(loop: str, seeds: int, rounds: int) -> str:
    """Where a proof's report goes: one folder per (seeds, rounds), so `make proof`'s two reports both stay."""
    return f"{loop}/proof/seeds-{seeds}-rounds-{rounds}"


@flow(name="flywheel-proof", flow_run_name="{config.loop}-proof")
def run_proof(config: FlywheelConfig, seeds: int = 3, rounds: int = 1) -> ProofReport:
    """``rounds`` rounds per seed for ``seeds`` seeds, then the report over them (see the module)."""
    if seeds < 1 or rounds < 1:
        raise ValueError(f"flywheel proof needs at least one seed and one round (got --seeds {seeds}, --rounds {rounds})")
    store = store_from_config(config.storage)
    runs = [run_seed(store, seed_config(config, k), k, rounds) for k in range(seeds)]
    rows = with_mean_intervals(store, config, runs, metric_rows(runs, rounds))
    report = ProofReport(loop=config.loop, seeds=seeds, rounds=rounds, runs=runs, rows=rows)
    key = proof_key(config.loop, seeds, rounds)
    report = report.model_copy(update={"artifacts": store.uri(key)})
    with store.stage(key) as out:
        (out / "proof.json").write_text(report.model_dump_json(indent=2))
        (out / "proof.md").write_text(proof_markdown(report))
    return report


def run_seed(store: ArtifactStore, config: FlywheelConfig, seed: int, rounds: int) -> SeedRun:
    """The seed loop's first ``rounds`` rounds, run where missing, and what its answers show."""
    while len(read_history(store, config.loop)) < rounds:
        run_next_round(config)
    history = read_history(store, config.loop)[:rounds]
    return read_answers(store, SeedRun(seed=seed, loop=config.loop, rounds=history))


class _Evaluation:
    """A round's evaluate stage as stored: the held-out prompts, both policies' answers, the verdicts."""

    def __init__(self, store: ArtifactStore, loop: str, round_index: int):
        folder = store.local_path(layout.stage_key(loop, round_index, layout.EVALUATE))
        prompts = read_jsonl(store.local_path(layout.stage_key(loop, round_index, layout.PROMPTS)) / layout.EVAL_PROMPTS, Prompt)
        self.prompts = {p.id: p for p in prompts}
        answers = read_jsonl(folder / layout.COMPLETIONS, Completion)
        self.answers = {policy: [c for c in answers if c.policy == policy] for policy in ("champion", "challenger")}
        self.verdicts = read_jsonl(folder / layout.VERDICTS, PairVerdict)
        self.result = PairwiseResult.model_validate_json((folder / layout.PAIRWISE).read_text())


def read_answers(store: ArtifactStore, run: SeedRun) -> SeedRun:
    """``run`` with round 0's and its champion's unrequested forms and telling examples: from round 1's
    evaluation (round 0 against round 1) and from the last promoted round's (that champion against the
    one it beat); none when round 1 trained no challenger."""
    trained = [s for s in run.rounds if store.is_complete(layout.stage_key(run.loop, s.round, layout.EVALUATE))]
    if not trained or trained[0].round != run.rounds[0].round:
        return run
    first = _Evaluation(store, run.loop, trained[0].round)
    promoted = [s for s in trained if s.promoted]
    last = promoted[-1] if promoted else trained[0]
    shown = first if last.round == trained[0].round else _Evaluation(store, run.loop, last.round)
    champion = shown.answers["challenger"] if promoted else first.answers["champion"]
    best, worst = telling_examples(list(shown.prompts.values()), shown.answers, shown.verdicts)
    return run.model_copy(update=dict(
        held_out=held_out_counts(first.result), champion_round=last.round if promoted else 0,
        unrequested={"round 0": count_unrequested_forms(first.answers["champion"], first.prompts),
                     "champion": count_unrequested_forms(champion, first.prompts)},
        examples_rounds=(last.champion_before, last.round), best=best, worst=worst,
    ))


def with_mean_intervals(store: ArtifactStore, config: FlywheelConfig, runs: list[SeedRun], rows: list[MetricRow]) -> list[MetricRow]:
    """``rows`` with the mean's interval (seeds and held-out prompts resampled) on the pairwise eval's
    figures: the win rate and the seen and unseen types' change, from every seed's stored evaluation
    of that round (a seed whose round trained no challenger is left out of it)."""
    unseen = unseen_types(config.prompts)
    intervals: dict[tuple[int, str], tuple[float | None, float | None]] = {}
    for index in range(max((len(run.rounds) for run in runs), default=0)):
        evaluations = [_Evaluation(store, run.loop, run.rounds[index].round) for run in runs if index < len(run.rounds)
                       and store.is_complete(layout.stage_key(run.loop, run.rounds[index].round, layout.EVALUATE))]
        if not evaluations:
            continue
        per_seed = {"win rate": [outcome_per_prompt(e.verdicts) for e in evaluations]}
        for kind in ("seen", "unseen"):
            per_seed[f"{kind} types change"] = [change_per_prompt(*(met_by_prompt(list(e.prompts.values()), e.answers[policy], unseen)[kind]
                                                                    for policy in ("champion", "challenger"))) for e in evaluations]
        for metric, per_prompt in per_seed.items():
            intervals[(index + 1, metric)] = seeds_and_prompts_interval(per_prompt, config.evaluate.bootstrap_samples, config.evaluate.seed)
    return [row.model_copy(update=dict(zip(("mean_low", "mean_high"), intervals[(row.round, row.metric)])))
            if (row.round, row.metric) in intervals else row for row in rows]


def held_out_counts(result: PairwiseResult) -> dict[str, int]:
    return {"prompts": result.n, "seen constraints": result.n_seen_constraints, "unseen constraints": result.n_unseen_constraints,
            "prompts with a seen type": result.n_seen_prompts, "prompts with an unseen type": result.n_unseen_prompts}


def binomial_half_width(rate: float, n: int) -> float:
    """Half the width of a 95% normal interval of a share ``rate`` over ``n`` independent outcomes."""
    return 1.96 * math.sqrt(rate * (1 - rate) / n) if n else float("nan")


def proof_markdown(report: ProofReport) -> str:
    lines = [f"# {report.loop}: {report.rounds} round(s) over {report.seeds} seed(s)", "",
             "Each figure as mean ± standard deviation and range over the seeds; beside it the eval's own 95% interval "
             "(half its width, mean over the seeds): the win rate's bootstrap, the seen/unseen change's paired bootstrap. "
             "For those three figures, the mean's 95% interval: seeds and held-out prompts both resampled.", "",
             as_markdown(rows_table(report.rows, report.seeds)), ""]
    for run in report.runs:
        lines += _seed_markdown(run)
    return "\n".join(lines)


def _seed_markdown(run: SeedRun) -> list[str]:
    lines = [f"## seed {run.seed} (loop {run.loop}): champion from round {run.champion_round}", ""]
    if run.held_out:
        counts = ", ".join(f"{n} {what}" for what, n in run.held_out.items())
        widths = ", ".join(f"±{binomial_half_width(TYPICAL_RATE, run.held_out[k]) * 100:.1f} points on {k}"
                           for k in ("seen constraints", "unseen constraints") if run.held_out.get(k))
        lines += [f"Held out: {counts}; a binomial 95% interval at {TYPICAL_RATE:.0%} satisfaction: {widths or '-'}.", ""]
    if run.unrequested:
        header = ["answers of", *FORMS, "any", "answers"]
        rows = [[who, *(counts.get(k, 0) for k in (*FORMS, "any", "answers"))] for who, counts in run.unrequested.items()]
        lines += ["Unrequested forms (answers carrying each on held-out prompts that did not ask for it):", "",
                  as_markdown(Table(header, rows)), ""]
    if run.best or run.worst:
        earlier, later = run.examples_rounds
        lines += [examples_markdown(run.best, run.worst, later, earlier).replace("## ", "### "), ""]
    return lines
