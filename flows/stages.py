"""The round's nine stages as Prefect tasks, in the order a round runs them: each loads its inputs,
calls its stage's core in tasks/, and hands the rest (resume, staging, metrics) to
``flows/stage_runner.py``'s ``run_stage``. Every task returns ``StageResult(key, result)``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows.answer_cache import baseline_answers, champion_answers, regression_between
from flows.stage_runner import RoundContext, StageResult, config_hash, inputs_hash, read_stage_records, run_stage, stage_logger
from infra import layout
from infra.champion import crown
from infra.records import Candidate, Judgment, PreferencePair, Prompt, write_jsonl
from infra.round_lineage import decision_tags, pairs_dataset, pairs_digest
from infra.store import hash_json

if TYPE_CHECKING:
    from tasks.train import TrainResult


@task(name=layout.PROMPTS, cache_policy=NO_CACHE)
def select_prompts_task(ctx: RoundContext) -> StageResult:
    """The round's training sample and the loop's held-out set."""
    from tasks.prompts import PromptsSummary, round_prompts, summarize_prompts

    def compute(out: Path) -> PromptsSummary:
        train, held_out = round_prompts(ctx.config.prompts, ctx.data_dir, ctx.round_index)
        write_jsonl(out / layout.TRAIN_PROMPTS, train)
        write_jsonl(out / layout.EVAL_PROMPTS, held_out)
        return summarize_prompts(train, held_out)

    return run_stage(ctx, layout.PROMPTS, compute, result_type=PromptsSummary, result_file=layout.STAGE_SUMMARY,
                     config_sections=["prompts"], metrics=lambda r: r.model_dump())


@task(name=layout.GENERATE, cache_policy=NO_CACHE)
def generate_candidates_task(ctx: RoundContext, prompts: StageResult) -> StageResult:
    """k candidates per training prompt, sampled from the champion."""
    from tasks.generate import GenerateSummary, generate_candidates, summarize_candidates
    from tasks.sampling.backends import open_backend

    def compute(out: Path) -> GenerateSummary:
        train = read_stage_records(ctx, prompts, layout.TRAIN_PROMPTS, Prompt)
        with open_backend(ctx.champion_checkpoint, ctx.config.generate, ctx.config.model) as backend:
            started = time.perf_counter()
            seed = ctx.config.generate.seed * 1000 + ctx.round_index
            candidates = generate_candidates(backend, train, ctx.config.generate, seed)
            seconds = time.perf_counter() - started
        write_jsonl(out / layout.CANDIDATES, candidates)
        return summarize_candidates(candidates, seconds)

    return run_stage(ctx, layout.GENERATE, compute, result_type=GenerateSummary, result_file=layout.STAGE_SUMMARY,
                     reads=[prompts], starts_from=ctx.champion.checkpoint, config_sections=["model", "generate"],
                     metrics=lambda r: r.model_dump(exclude={"seconds"}))


@task(name=layout.JUDGE, cache_policy=NO_CACHE)
def judge_pairs_task(ctx: RoundContext, prompts: StageResult, candidates: StageResult) -> StageResult:
    """Every pair of candidates of every prompt, judged; agreement with the judges in judge.compare_with."""
    import math

    from tasks.judge import JudgeSummary, build_judge, judge_agreement, judge_pairs, judge_summary

    def compute(out: Path) -> JudgeSummary:
        train = read_stage_records(ctx, prompts, layout.TRAIN_PROMPTS, Prompt)
        sampled = read_stage_records(ctx, candidates, layout.CANDIDATES, Candidate)
        judge = build_judge(ctx.config.judge, store=ctx.store)
        judgments = judge_pairs(train, sampled, judge)
        n_pairs = len(train) * math.comb(ctx.config.generate.n_candidates, 2)
        figures = {**judge.summary(n_pairs), **judge_summary(judgments)}
        judge.check_failures(n_pairs)
        by_id = {p.id: p for p in train}
        texts = {(c.prompt_id, c.index): c.text for c in sampled}
        compared = [(by_id[j.prompt_id], texts[(j.prompt_id, j.index_a)], texts[(j.prompt_id, j.index_b)]) for j in judgments]
        for name in ctx.config.judge.compare_with:
            other = build_judge(ctx.config.judge.model_copy(update={"name": name}), store=ctx.store)
            agreement = judge_agreement(judge, other, compared)
            figures.update({f"agreement_{name}": agreement["agreement"], f"kappa_{name}": agreement["kappa"]})
        write_jsonl(out / layout.JUDGMENTS, judgments)
        return JudgeSummary(figures=figures)

    return run_stage(ctx, layout.JUDGE, compute, result_type=JudgeSummary, result_file=layout.STAGE_SUMMARY,
                     reads=[prompts, candidates], config_sections=["judge"], metrics=lambda r: r.figures)


@task(name=layout.FILTER, cache_policy=NO_CACHE)
def filter_pairs_task(ctx: RoundContext, prompts: StageResult, candidates: StageResult, judgments: StageResult) -> StageResult:
    """Clean preference pairs, as records and as a dataset in TRL's format."""
    from datasets import Dataset

    from tasks.filter import FilterReport, filter_pairs
    from tasks.training.objectives import to_trl_rows

    def compute(out: Path) -> FilterReport:
        pairs, report = filter_pairs(
            read_stage_records(ctx, prompts, layout.TRAIN_PROMPTS, Prompt),
            read_stage_records(ctx, candidates, layout.CANDIDATES, Candidate),
            read_stage_records(ctx, judgments, layout.JUDGMENTS, Judgment),
            ctx.config.filter,
        )
        write_jsonl(out / layout.PAIRS, pairs)
        Dataset.from_list(to_trl_rows(pairs)).save_to_disk(str(out / layout.TRL_DATASET))
        return report

    def metrics(report: FilterReport) -> dict[str, float]:
        figures = {"n_kept": report.n_kept, "n_judgments": report.n_judgments}
        figures.update({f"dropped_{reason}": n for reason, n in report.dropped.items()})
        return {**figures, **report.validation}

    kept = run_stage(ctx, layout.FILTER, compute, result_type=FilterReport, result_file=layout.FILTER_REPORT,
                     reads=[prompts, candidates, judgments], config_sections=["filter"], metrics=metrics)
    # The pairs as the run's dataset input: best-effort, queued through an outage like the metrics.
    ctx.tracker.log_dataset(pairs_dataset(ctx.store, kept.key, ctx.round_index))
    return kept


def earlier_pairs(ctx: RoundContext) -> list[StageResult]:
    """The filter stages of the rounds before this one that are complete (replay reads their pairs)."""
    keys = [layout.stage_key(ctx.loop, r, layout.FILTER) for r in range(1, ctx.round_index)]
    return [StageResult(key, None) for key in keys if ctx.store.is_complete(key)]


def reference_logps_key(ctx: RoundContext, reads: Sequence[StageResult]) -> str:
    """Where the train stage keeps its reference pass's log-probs: beside the stage, named by the
    pairs read, the policy started from and the model and train config (any change: a new pass)."""
    digest = hash_json({"inputs": inputs_hash(ctx.store, reads, ctx.champion.checkpoint), "config": config_hash(ctx.config, ["model", "train"])})
    return f"{ctx.key(layout.TRAIN)}-reference-logps/{digest[:16]}.json"


@task(name=layout.TRAIN, cache_policy=NO_CACHE)
def train_policy_task(ctx: RoundContext, pairs: StageResult) -> StageResult:
    """A challenger: the champion DPO-trained (LoRA) on the round's pairs (and some of earlier
    rounds', train.replay_share) against the reference train.reference names, merged. In
    train.num_processes processes when more than one (tasks/launch.py): their steps come back
    here and are logged once."""
    from infra.champion import base_policy, local_checkpoint
    from tasks.figures import training_figure
    from tasks.launch import launch_training, launched
    from tasks.train import TrainJob, TrainResult, shared_reference_logps, train_policy

    cfg = ctx.config
    # Earlier rounds' pairs are inputs too: a resumed round replays the same ones.
    replay_from = earlier_pairs(ctx) if cfg.train.replay_share > 0 else []

    def log_step(logs: dict, step: int) -> None:
        ctx.tracker.log_metrics({f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}, step=step)

    def compute(out: Path) -> TrainResult:
        kept = read_stage_records(ctx, pairs, layout.PAIRS, PreferencePair)
        earlier = [pair for stage in replay_from for pair in read_stage_records(ctx, stage, layout.PAIRS, PreferencePair)]
        reference = local_checkpoint(base_policy(cfg), ctx.store, ctx.data_dir) if cfg.train.reference == "initial" else None
        # The reference pass's log-probs go to the store before the first step (one process), under a
        # key naming what they depend on, so a rerun of a killed training reads them instead of redoing it.
        logps_key = ctx.reference_logps_key or reference_logps_key(ctx, [pairs, *replay_from])
        shared = ctx.store.read_json(logps_key)
        if shared is not None:
            stage_logger().info("%s: the reference's log-probs read from %s (no reference pass)", ctx.key(layout.TRAIN), logps_key)

        def keep(logps: dict) -> None:
            ctx.store.write_json(logps_key, logps)

        job = TrainJob(checkpoint=ctx.champion_checkpoint, pairs=kept, config=cfg.train, model=cfg.model, round_index=ctx.round_index,
                       output_dir=out, reference_checkpoint=reference, earlier_pairs=earlier, reference_logps=shared)
        if cfg.train.engine == "ray":
            result = train_on_ray_cluster(ctx, job, logps_key, log_step, keep)
            in_processes = False  # the relay handed the log-probs out as they came
        else:
            # One process hands them out before its first step; a launch's processes only with their result.
            in_processes = launched(cfg.train)
            result = launch_training(job, log_step) if in_processes else train_policy(job, log_step, on_reference_logps=keep)
        if shared is None and in_processes and shared_reference_logps(result):
            keep(shared_reference_logps(result))
        training_figure(result.log_history, out / layout.TRAINING_FIGURE,
                        f"{ctx.loop} round {ctx.round_index}: {result.objective} training", result.start.expected_loss)
        return result

    trained = run_stage(ctx, layout.TRAIN, compute, result_type=TrainResult, result_file=layout.TRAIN_RESULT,
                        reads=[pairs, *replay_from], starts_from=ctx.champion.checkpoint, config_sections=["model", "train"],
                        metrics=train_metrics)
    ctx.tracker.log_artifact(ctx.store.local_path(trained.key) / layout.TRAINING_FIGURE, layout.FIGURES)
    ctx.tracker.set_tags({"flywheel.objective": trained.result.objective})
    return trained


def train_on_ray_cluster(ctx: RoundContext, job, logps_key: str, log_step, keep) -> TrainResult:
    """The training as a Ray Train run on the configured cluster (tasks/ray_training.py); Ray Train's
    checkpoints under the train stage's key in the artifact store, in a run named after what it trains."""
    from infra.ray_cluster import join_cluster, ray_storage
    from tasks.ray_training import train_on_ray

    join_cluster(ctx.config.ray)
    storage = ray_storage(ctx.store.uri(f"{ctx.key(layout.TRAIN)}-ray"), ctx.config.storage.s3_endpoint_url)
    run_name = "train-" + logps_key.rsplit("/", 1)[-1].removesuffix(".json")
    return train_on_ray(job, storage, run_name, log_step, keep)


def train_metrics(result: TrainResult) -> dict[str, float]:
    """What MLflow records of a training, as ``train/<name>``."""
    figures = {
        "initial_loss": result.initial_loss, "final_loss": result.final_loss,
        "final_reward_accuracy": result.final_reward_accuracy, "final_reward_margin": result.final_reward_margin,
        "pairs_per_s": result.pairs_per_s, "beta": result.beta, "learning_rate_round": result.learning_rate,
        "alarms": len(result.alarms), "n_pairs": result.n_pairs, "n_replayed": result.n_replayed,
        "nll_weight": result.nll_weight, "reference_initial": float(result.reference == "initial"),
        "lora_r": result.lora_r or 0, "reference_free": float(result.reference == "none"),
        "start_train_margin": result.start.train_margin, "start_heldout_margin": result.start.heldout_margin,
    }
    if result.mfu is not None:
        figures.update(achieved_tflops=result.achieved_tflops, mfu=result.mfu, trained_tokens=result.trained_tokens)
    if result.best_epoch is not None:
        figures.update(best_epoch=result.best_epoch, kept_heldout_loss=result.kept_heldout_loss)
    return figures


@task(name=layout.EVALUATE, cache_policy=NO_CACHE)
def evaluate_pairwise_task(ctx: RoundContext, challenger: StageResult, prompts: StageResult) -> StageResult:
    """The challenger against the champion on the held-out prompts, judged in both orders; both
    (and the round-0 policy, cached) on the unconstrained prompts."""
    from tasks.evaluate import PairwiseResult, pairwise_between, pairwise_metrics, write_pairwise
    from tasks.prompts import unconstrained_prompts

    def compute(out: Path) -> PairwiseResult:
        held_out = read_stage_records(ctx, prompts, layout.EVAL_PROMPTS, Prompt)
        everyday = unconstrained_prompts(ctx.config.evaluate.n_unconstrained, ctx.config.evaluate.seed)
        champion = champion_answers(ctx, held_out, everyday)
        # While the champion is the round-0 policy its answers are the baseline's: not generated twice.
        champion_is_base = not ctx.champion.train_key and ctx.champion.checkpoint == ctx.config.model.base
        baseline = baseline_answers(ctx.store, ctx.config, everyday, answers=champion[1] if champion_is_base else None)
        challenger_checkpoint = str(ctx.store.local_path(challenger.key) / layout.MERGED)
        run = pairwise_between(held_out, ctx.champion_checkpoint, challenger_checkpoint, ctx.config, ctx.store,
                               unconstrained=everyday, baseline=baseline, champion_answers=champion)
        write_pairwise(out, run)
        return run.result

    # "prompts": the unseen constraint types (prompts.unseen_types) split the constraint rates.
    return run_stage(ctx, layout.EVALUATE, compute, result_type=PairwiseResult, result_file=layout.PAIRWISE,
                     reads=[challenger, prompts], starts_from=ctx.champion.checkpoint,
                     config_sections=["model", "prompts", "evaluate", "judge"], metrics=pairwise_metrics)


@task(name=layout.REGRESSION, cache_policy=NO_CACHE)
def check_regression_task(ctx: RoundContext, challenger: StageResult) -> StageResult:
    """Benchmarks before (the champion, cached) and after (the challenger); a drop beyond tolerance fails."""
    import json

    from tasks.regression import RegressionResult, regression_metrics

    def compute(out: Path) -> RegressionResult:
        # The challenger is known by the URI it would have as champion, so promotion reuses its scores.
        after = (str(ctx.store.local_path(challenger.key) / layout.MERGED), layout.merged_uri(ctx.store, challenger.key))
        before_scores, after_scores, result = regression_between(
            ctx.store, ctx.config, (ctx.champion_checkpoint, ctx.champion.checkpoint), after
        )
        for name, scores in ((layout.BENCHMARKS_BEFORE, before_scores), (layout.BENCHMARKS_AFTER, after_scores)):
            (out / name).write_text(json.dumps({task: score.model_dump() for task, score in scores.items()}, indent=2))
        return result

    return run_stage(ctx, layout.REGRESSION, compute, result_type=RegressionResult, result_file=layout.REGRESSION_RESULT,
                     reads=[challenger], starts_from=ctx.champion.checkpoint, config_sections=["model", "regression"],
                     metrics=regression_metrics)


@task(name=layout.PROMOTE, cache_policy=NO_CACHE)
def promote_task(ctx: RoundContext, challenger: StageResult | None, pairwise: StageResult | None,
                 regression: StageResult | None, not_trained: str | None = None) -> StageResult:
    """The gate; a challenger that passes it becomes the champion (registry version, alias, pointer).
    ``not_trained``: why there is no challenger, when there is none."""
    from tasks.promote import Decision, decide_promotion

    def compute(out: Path) -> Decision:
        train = challenger.result if challenger else None
        decision = decide_promotion(pairwise.result if pairwise else None, regression.result if regression else None,
                                    ctx.config.promotion, train.alarms if train else None, not_trained=not_trained)
        if decision.promote and challenger is not None:
            gate = decision_tags(decision.promote, decision.reasons, pairs_digest(ctx.store, ctx.key(layout.FILTER)))
            crown(ctx.store, ctx.tracker, ctx.config, challenger.key, ctx.round_index, started_from=ctx.champion.checkpoint, decision=gate)
        return decision

    decided = run_stage(ctx, layout.PROMOTE, compute, result_type=Decision, result_file=layout.DECISION,
                        reads=[s for s in (challenger, pairwise, regression) if s is not None],
                        # Why nothing was trained is an input too: a decision for another cause is not reused.
                        starts_from=ctx.champion.checkpoint + (f"|{not_trained}" if not_trained else ""),
                        config_sections=["promotion"], metrics=lambda d: {"promoted": float(d.promote)})
    ctx.tracker.set_tags({"flywheel.decision": "promoted" if decided.result.promote else "rejected"})
    return decided


class RoundFigures(BaseModel):
    files: dict[str, str]  # title -> file in the figures stage


@task(name=layout.FIGURES, cache_policy=NO_CACHE)
def write_figures_task(ctx: RoundContext, challenger: StageResult | None, history: list) -> StageResult:
    """The round's PNGs: its training figure and the loop's figure across rounds so far."""
    import shutil

    from tasks.figures import loop_figure

    def compute(out: Path) -> RoundFigures:
        files = {}
        if challenger is not None:
            shutil.copy(ctx.store.local_path(challenger.key) / layout.TRAINING_FIGURE, out / layout.TRAINING_FIGURE)
            files["DPO training"] = layout.TRAINING_FIGURE
        (out / layout.LOOP_FIGURE).write_bytes(loop_figure(history))
        files["across rounds"] = layout.LOOP_FIGURE
        return RoundFigures(files=files)

    drawn = run_stage(ctx, layout.FIGURES, compute, result_type=RoundFigures, result_file=layout.STAGE_SUMMARY,
                      reads=[challenger] if challenger else [],
                      starts_from=hash_json([r.model_dump(mode="json") for r in history]))
    ctx.tracker.log_artifact(ctx.store.local_path(drawn.key) / layout.LOOP_FIGURE, layout.FIGURES)
    return drawn


def figure_bytes(ctx: RoundContext, figures: StageResult) -> dict[str, bytes]:
    folder = ctx.store.local_path(figures.key)
    return {title: (folder / name).read_bytes() for title, name in figures.result.files.items()}
