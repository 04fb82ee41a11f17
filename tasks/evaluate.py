"""evaluate: the new policy (challenger) against the champion on held-out prompts.

Reads: both checkpoints and the held-out prompts.
Writes: ``completions.jsonl`` (both policies' responses, with constraint scores),
``verdicts.jsonl`` and ``pairwise.json`` (wins, ties, losses, win rate with a
95% bootstrap interval, held-out constraint satisfaction of both).

Each pair is judged in both orders so a judge's position bias cannot decide it:
the same verdict both ways stands, different verdicts make a tie.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from infra import layout
from infra.records import Completion, Prompt, Verdict, write_jsonl
from infra.settings import EvalConfig
from tasks.constraints import check_constraints
from tasks.generate import SampleRequest, sample_batched
from tasks.judge import Judge


class PairVerdict(BaseModel):
    prompt_id: str
    forward: Verdict  # champion shown as A
    backward: Verdict  # challenger shown as A
    outcome: str  # "win", "tie" or "loss", for the challenger


class PairwiseResult(BaseModel):
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float  # ties count half
    win_rate_low: float
    win_rate_high: float
    consistency_rate: float  # share of pairs whose two orders agree
    champion_constraint_rate: float
    challenger_constraint_rate: float
    champion_strict_rate: float  # share of prompts with every constraint met
    challenger_strict_rate: float
    # What a raw win rate hides: length, and the failure modes the guide names.
    lc_win_rate: float = float("nan")  # win rate at equal length (AlpacaEval-2-style regression)
    champion_mean_words: float = float("nan")
    challenger_mean_words: float = float("nan")
    champion_words: list[int] = []
    challenger_words: list[int] = []
    champion_failure_rates: dict[str, float] = {}
    challenger_failure_rates: dict[str, float] = {}


def length_controlled_win_rate(outcomes: list[float], length_diffs: list[float], steps: int = 200) -> float:
    """The challenger's win rate with the length difference regressed out: fit
    P(win) = sigmoid(a + b * tanh(diff / sd)) to the outcomes (ties as half a win), by Newton's
    method, and report sigmoid(a), the predicted win rate when both answers are equally long."""
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    if len(y) == 0:
        return float("nan")
    sd = d.std() or 1.0
    x = np.stack([np.ones_like(d), np.tanh(d / sd)], axis=1)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        gradient = x.T @ (y - p) - 1e-3 * w  # a whisper of L2 keeps separable data finite
        hessian = -(x.T * (p * (1 - p))) @ x - 1e-3 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(1 / (1 + np.exp(-w[0])))


def generate_completions(model, tokenizer, prompts: list[Prompt], policy: str, config: EvalConfig) -> list[Completion]:
    """One response per held-out prompt, scored against the prompt's constraints."""
    requests = [SampleRequest(key=(p.id,), prompt=p.text, temperature=config.temperature) for p in prompts]
    decoded = sample_batched(
        model, tokenizer, requests, config.max_new_tokens, config.batch_size, config.seed, progress=f"eval {policy}"
    )
    completions = []
    for p in prompts:
        text = decoded[(p.id,)][0]
        met = check_constraints(text, p.constraints)
        score = sum(met) / len(met) if met else 1.0
        completions.append(Completion(prompt_id=p.id, policy=policy, text=text, constraint_score=score))
    return completions


def combine_orders(forward: Verdict, backward: Verdict) -> str:
    """Challenger's outcome from the champion-first and challenger-first verdicts."""
    first = {"A": "loss", "B": "win", "tie": "tie"}[forward]
    second = {"A": "win", "B": "loss", "tie": "tie"}[backward]
    return first if first == second else "tie"


def bootstrap_interval(scores: np.ndarray, n_samples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of per-prompt scores."""
    if len(scores) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), size=(n_samples, len(scores)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def evaluate_pairwise(
    prompts: list[Prompt],
    champion: list[Completion],
    challenger: list[Completion],
    judge: Judge,
    config: EvalConfig,
) -> tuple[PairwiseResult, list[PairVerdict]]:
    champ = {c.prompt_id: c for c in champion}
    chall = {c.prompt_id: c for c in challenger}
    forward = judge.compare_many([(p, champ[p.id].text, chall[p.id].text) for p in prompts])
    backward = judge.compare_many([(p, chall[p.id].text, champ[p.id].text) for p in prompts])
    verdicts = [
        PairVerdict(prompt_id=p.id, forward=f.verdict, backward=b.verdict, outcome=combine_orders(f.verdict, b.verdict))
        for p, f, b in zip(prompts, forward, backward)
        if f is not None and b is not None  # a pair the judge could not decide is left out
    ]
    judge.check_failures(len(prompts))
    scores = np.array([{"win": 1.0, "tie": 0.5, "loss": 0.0}[v.outcome] for v in verdicts])
    low, high = bootstrap_interval(scores, config.bootstrap_samples, config.seed)
    consistent = sum(
        {"A": "B", "B": "A", "tie": "tie"}[v.forward] == v.backward for v in verdicts
    )
    n = len(verdicts)
    kept = {v.prompt_id for v in verdicts}
    words = {policy: {c.prompt_id: len(c.text.split()) for c in completions} for policy, completions in (("champion", champion), ("challenger", challenger))}
    diffs = [words["challenger"][v.prompt_id] - words["champion"][v.prompt_id] for v in verdicts]
    lc = length_controlled_win_rate(list(scores), diffs)
    rates = {policy: failure_rates([c.text for c in completions if c.prompt_id in kept], judge_verbose_words(judge))
             for policy, completions in (("champion", champion), ("challenger", challenger))}
    return (
        PairwiseResult(
            n=n,
            wins=sum(v.outcome == "win" for v in verdicts),
            ties=sum(v.outcome == "tie" for v in verdicts),
            losses=sum(v.outcome == "loss" for v in verdicts),
            win_rate=float(scores.mean()) if n else float("nan"),
            win_rate_low=low,
            win_rate_high=high,
            consistency_rate=consistent / n if n else float("nan"),
            champion_constraint_rate=_mean(c.constraint_score for c in champion),
            challenger_constraint_rate=_mean(c.constraint_score for c in challenger),
            champion_strict_rate=_mean(float(c.constraint_score == 1.0) for c in champion),
            challenger_strict_rate=_mean(float(c.constraint_score == 1.0) for c in challenger),
            lc_win_rate=lc,
            champion_mean_words=_mean(words["champion"].values()),
            challenger_mean_words=_mean(words["challenger"].values()),
            champion_words=list(words["champion"].values()),
            challenger_words=list(words["challenger"].values()),
            champion_failure_rates=rates["champion"],
            challenger_failure_rates=rates["challenger"],
        ),
        verdicts,
    )


def pairwise_between(
    prompts: list[Prompt], champion_checkpoint: str, challenger_checkpoint: str, config, store=None
) -> tuple[dict[str, list[Completion]], PairwiseResult, list[PairVerdict]]:
    """Both checkpoints' answers to ``prompts`` (one model in memory at a time), judged by the
    eval's judge (``evaluate.judge``, else ``judge.name``) of the FlywheelConfig ``config``."""
    from infra.models import load_model, load_tokenizer
    from tasks.judge import build_judge

    completions = {}
    for policy, checkpoint in (("champion", champion_checkpoint), ("challenger", challenger_checkpoint)):
        model = load_model(checkpoint, config.model)
        completions[policy] = generate_completions(model, load_tokenizer(checkpoint), prompts, policy, config.evaluate)
        del model
    judge = build_judge(config.judge.model_copy(update={"name": config.evaluate.judge or config.judge.name}), store=store)
    result, verdicts = evaluate_pairwise(prompts, completions["champion"], completions["challenger"], judge, config.evaluate)
    return completions, result, verdicts


def write_pairwise(out, completions: dict[str, list[Completion]], verdicts: list[PairVerdict], result: PairwiseResult) -> None:
    """``completions.jsonl``, ``verdicts.jsonl`` and ``pairwise.json`` into the staging folder ``out``."""
    write_jsonl(out / layout.COMPLETIONS, completions["champion"] + completions["challenger"])
    write_jsonl(out / layout.VERDICTS, verdicts)
    (out / layout.PAIRWISE).write_text(result.model_dump_json(indent=2))


def pairwise_metrics(result: PairwiseResult) -> dict[str, float]:
    """The result's figures for MLflow, each failure mode's rate per policy among them."""
    metrics = {k: v for k, v in result.model_dump().items() if isinstance(v, (int, float))}
    for policy in ("champion", "challenger"):
        metrics.update({f"{policy}_failure/{mode}": rate for mode, rate in getattr(result, f"{policy}_failure_rates").items()})
    return metrics


def judge_verbose_words(judge: Judge) -> int:
    config = getattr(judge, "config", None)
    return getattr(config, "verbose_words", 150)


def failure_rates(completions: list[Completion], prompts: dict[str, Prompt], verbose_words: int = 150) -> dict[str, float]:
    """Share of responses showing each failure mode, and of those showing any."""
    from tasks.failure_modes import FAILURE_MODES, detect_failure_modes

    found = [detect_failure_modes(c.text, verbose_words) for c in completions]
    rates = {mode: _mean(float(f[mode]) for f in found) for mode in FAILURE_MODES}
    rates["any"] = _mean(float(any(f.values())) for f in found)
    return rates


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
