"""Answers and benchmark scores generated once and cached in the store beside the loop, so every
round, ablation cell and comparison that meets the same policy reuses them: the champion's
answers to the eval prompts, the round-0 policy's answers to the unconstrained prompts, and a
policy's benchmark scores (with the promotion gate's check of the drop between two policies).

Each cache key is a hash of what the cached value depends on (checkpoint and its weights' checksums,
model and sampling settings, the prompts), so a change to any of them generates anew.
"""

from __future__ import annotations

from pathlib import Path

from flows.stage_runner import RoundContext
from infra import layout
from infra.records import Completion, Prompt
from infra.settings import FlywheelConfig
from infra.store import ArtifactStore, hash_json


def champion_answers(ctx: RoundContext, held_out: list[Prompt], everyday: list[Prompt]) -> tuple[list[Completion], list[Completion]]:
    """The champion's answers to the held-out and everyday prompts, generated once per champion
    (its weights' checksums), sampling settings and prompts, and cached beside the loop: every
    ablation cell, and an evaluate stage run again, meets the same answers without regenerating them."""
    from tasks.evaluate import generate_answer_sets
    from tasks.sampling.backends import open_backend

    config, champion = ctx.config, ctx.champion
    manifest = ctx.store.manifest(champion.train_key) if champion.train_key else None
    weights = sorted((f.path, f.sha256) for f in manifest.files if f.path.startswith(layout.MERGED)) if manifest else None
    digest = hash_json({"checkpoint": champion.checkpoint, "weights": weights, "model": config.model.model_dump(mode="json"),
                        "generate": config.generate.model_dump(mode="json"), "evaluate": config.evaluate.model_dump(mode="json"),
                        "prompts": [p.model_dump(mode="json") for p in [*held_out, *everyday]]})
    key = layout.champion_answers_key(config.loop, digest)
    cached = ctx.store.read_json(key)
    if cached is not None:
        return tuple([Completion.model_validate(c) for c in cached[part]] for part in ("held_out", "unconstrained"))
    with open_backend(ctx.champion_checkpoint, config.generate, config.model) as backend:
        answers = tuple(generate_answer_sets(backend, [held_out, everyday], "champion", config.evaluate))
    ctx.store.write_json(key, {part: [a.model_dump(mode="json") for a in found] for part, found in zip(("held_out", "unconstrained"), answers)})
    return answers


def baseline_answers(store: ArtifactStore, config: FlywheelConfig, prompts: list[Prompt],
                     answers: list[Completion] | None = None) -> list[Completion]:
    """The round-0 policy's answers to the unconstrained ``prompts``, generated once and cached in
    the store beside the loop (keyed by the base model and the eval's settings), so every round's
    length is measured against the same answers. ``answers``: the round-0 policy's, already
    generated (it is the champion), cached instead of generating them when none are cached yet."""
    from infra.champion import base_policy, local_checkpoint
    from tasks.evaluate import generate_completions
    from tasks.sampling.backends import open_backend

    if not prompts:
        return []
    digest = hash_json({"checkpoint": config.model.base, "model": config.model.model_dump(mode="json"),
                        "evaluate": config.evaluate.model_dump(mode="json"), "prompts": [p.model_dump(mode="json") for p in prompts]})
    cache_key = layout.baseline_answers_key(config.loop, digest)
    cached = store.read_json(cache_key)
    if cached is not None:
        return [Completion.model_validate(c) for c in cached]
    if answers is None:
        checkpoint = local_checkpoint(base_policy(config), store, config.storage.data_dir)
        with open_backend(checkpoint, config.generate, config.model) as backend:
            # Recorded as the champion's: the round-0 policy is the champion the first round meets.
            answers = generate_completions(backend, prompts, "champion", config.evaluate)
    store.write_json(cache_key, [a.model_dump(mode="json") for a in answers])
    return answers


def benchmark_scores(store: ArtifactStore, config: FlywheelConfig, checkpoint: str, identity: str) -> dict:
    """Benchmark scores of ``checkpoint`` (known as ``identity`` on every machine), cached in the
    store beside the loop, so a policy is scored once however many rounds and comparisons meet it."""
    from infra.models import load_model, load_tokenizer
    from tasks.regression import BenchmarkScore, score_benchmarks

    settings = config.regression
    digest = hash_json({"checkpoint": identity, "tasks": settings.tasks, "limit": settings.limit,
                        "model": config.model.model_dump(mode="json")})
    cache_key = layout.benchmark_scores_key(config.loop, digest)
    cached = store.read_json(cache_key)
    if cached is not None:
        return {name: BenchmarkScore.model_validate(score) for name, score in cached.items()}
    model = load_model(checkpoint, config.model)
    scores = score_benchmarks(model, load_tokenizer(checkpoint), settings.tasks, settings.limit, settings.batch_size,
                              Path(config.storage.data_dir) / "lm_eval")
    store.write_json(cache_key, {name: score.model_dump() for name, score in scores.items()})
    return scores


def regression_between(store: ArtifactStore, config: FlywheelConfig, before: tuple[str, str], after: tuple[str, str]):
    """Both policies' benchmark scores and the promotion gate's check of the drop; each policy is
    given as (local checkpoint, identity)."""
    from tasks.regression import compare_scores

    settings = config.regression
    scores = benchmark_scores(store, config, *before), benchmark_scores(store, config, *after)
    return (*scores, compare_scores(*scores, settings.tolerance, settings.stderr_multiple, settings.per_task_tolerance))

