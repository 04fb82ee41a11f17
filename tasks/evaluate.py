"""evaluate: the new policy (challenger) against the champion on held-out prompts.

Reads: both checkpoints, the held-out prompts, the unconstrained prompts and the round-0
policy's (cached) answers to them.
Writes: ``completions.jsonl`` (both policies' responses, with constraint scores),
``verdicts.jsonl`` and ``pairwise.json`` (wins, ties, losses, win rate with a
95% bootstrap interval, held-out constraint satisfaction of both, on the constraint types
trained on and on the unseen ones apart), ``unconstrained.jsonl`` (both policies' answers to
everyday requests with nothing to check: their length and failure modes are in ``pairwise.json``)
and, with a model judge, ``unconstrained_verdicts.jsonl``.

Each pair is judged in both orders so a judge's position bias cannot decide it:
the same verdict both ways stands, different verdicts make a tie.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel

from infra import layout
from infra.records import Completion, Prompt, Verdict, write_jsonl
from infra.settings import EvalConfig
from tasks.constraints import check_constraints
from tasks.judge import Judge
from tasks.sampling.requests import SampleRequest


class PairVerdict(BaseModel):
    prompt_id: str
    forward: Verdict  # champion shown as A
    backward: Verdict  # challenger shown as A
    outcome: str  # "win", "tie" or "loss", for the challenger


class UnconstrainedResult(BaseModel):
    """Both policies' answers to everyday requests with nothing to check; the challenger's length
    is also measured against the round-0 policy's, so drift cannot add up round by round."""

    n: int
    champion_words: list[int]
    challenger_words: list[int]
    champion_mean_words: float
    challenger_mean_words: float
    champion_quartiles: list[float]  # 25th, 50th and 75th percentile of words
    challenger_quartiles: list[float]
    champion_failure_rates: dict[str, float]
    challenger_failure_rates: dict[str, float]
    baseline_words: list[int] = []  # the round-0 policy's answers to the same prompts
    baseline_mean_words: float | None = None  # None: no round-0 answers (e.g. `flywheel compare`)
    baseline_failure_rates: dict[str, float] = {}
    judge: str | None = None  # the model judge whose verdicts follow; None: none configured, not judged
    wins: int = 0
    ties: int = 0
    losses: int = 0
    win_rate: float | None = None  # the challenger's, ties counting half
    win_rate_low: float | None = None
    win_rate_high: float | None = None


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
    # Constraint satisfaction by kind: share of the constraints of types trained on ("seen") and of
    # types held out of training (prompts.unseen_types) met; None where the prompts carry none.
    n_seen_constraints: int = 0
    n_unseen_constraints: int = 0
    champion_seen_rate: float | None = None
    challenger_seen_rate: float | None = None
    champion_unseen_rate: float | None = None
    challenger_unseen_rate: float | None = None
    # The change (challenger - champion) of each kind's satisfaction, with its paired 95% bootstrap
    # interval: prompts resampled, both policies' answers to a prompt kept together. None: no such constraint.
    n_seen_prompts: int = 0  # held-out prompts carrying a seen (unseen) constraint
    n_unseen_prompts: int = 0
    seen_change_low: float | None = None
    seen_change_high: float | None = None
    unseen_change_low: float | None = None
    unseen_change_high: float | None = None
    unconstrained: UnconstrainedResult | None = None  # None: evaluate.n_unconstrained is 0


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


def generate_completions(backend, prompts: list[Prompt], policy: str, config: EvalConfig) -> list[Completion]:
    """One response per held-out prompt from ``backend`` (a tasks.sampling.backends.SamplingBackend), scored
    against the prompt's constraints."""
    return generate_answer_sets(backend, [prompts], policy, config)[0]


def generate_answer_sets(backend, prompt_sets: Sequence[list[Prompt]], policy: str, config: EvalConfig) -> list[list[Completion]]:
    """``generate_completions`` for several sets of prompts in one call, so they share batches:
    a set's small last batch decodes nearly as slowly as a full one (docs/speed.md)."""
    requests = [SampleRequest(key=(n, p.id), prompt=p.text, temperature=config.temperature)
                for n, prompts in enumerate(prompt_sets) for p in prompts]
    if not requests:
        return [[] for _ in prompt_sets]
    decoded = backend.sample(requests, config.max_new_tokens, config.batch_size, config.seed, progress=f"eval {policy}")
    sets = []
    for n, prompts in enumerate(prompt_sets):
        completions = []
        for p in prompts:
            text, _, truncated = decoded[(n, p.id)]
            met = check_constraints(text, p.constraints)
            score = sum(met) / len(met) if met else 1.0
            completions.append(Completion(prompt_id=p.id, policy=policy, text=text, constraint_score=score, truncated=truncated))
        sets.append(completions)
    return sets


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


def judge_both_orders(prompts: list[Prompt], champion: dict[str, str], challenger: dict[str, str], judge: Judge) -> list[PairVerdict]:
    """Each prompt's pair of answers (by prompt id) judged champion-first and challenger-first."""
    forward = judge.compare_many([(p, champion[p.id], challenger[p.id]) for p in prompts])
    backward = judge.compare_many([(p, challenger[p.id], champion[p.id]) for p in prompts])
    verdicts = [
        PairVerdict(prompt_id=p.id, forward=f.verdict, backward=b.verdict, outcome=combine_orders(f.verdict, b.verdict))
        for p, f, b in zip(prompts, forward, backward)
        if f is not None and b is not None  # a pair the judge could not decide is left out
    ]
    judge.check_failures(len(prompts))
    return verdicts


def outcome_scores(verdicts: list[PairVerdict]) -> np.ndarray:
    return np.array([{"win": 1.0, "tie": 0.5, "loss": 0.0}[v.outcome] for v in verdicts])


def rates_by_kind(prompts: list[Prompt], completions: list[Completion], unseen: Collection[str]) -> dict[str, list[bool]]:
    """Whether each constraint was met, pooled by kind: "seen" (types trained on) and "unseen"."""
    texts = {c.prompt_id: c.text for c in completions}
    met: dict[str, list[bool]] = {"seen": [], "unseen": []}
    for p in prompts:
        if p.id in texts and p.constraints:
            for constraint, ok in zip(p.constraints, check_constraints(texts[p.id], p.constraints)):
                met["unseen" if constraint.id in unseen else "seen"].append(ok)
    return met


def met_by_prompt(prompts: list[Prompt], completions: list[Completion], unseen: Collection[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per kind ("seen", "unseen"), each answered prompt's (constraints of that kind met, constraints of that kind)."""
    texts = {c.prompt_id: c.text for c in completions}
    counts: dict[str, dict[str, tuple[int, int]]] = {"seen": {}, "unseen": {}}
    for p in prompts:
        if p.id not in texts or not p.constraints:
            continue
        for constraint, ok in zip(p.constraints, check_constraints(texts[p.id], p.constraints)):
            kind = counts["unseen" if constraint.id in unseen else "seen"]
            met, total = kind.get(p.id, (0, 0))
            kind[p.id] = (met + ok, total + 1)
    return counts


def paired_change_interval(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], n_samples: int,
                           seed: int) -> tuple[float | None, float | None]:
    """95% percentile interval of the change of a pooled satisfaction rate (after - before), by a
    paired bootstrap: prompts are resampled, and a prompt's answers by both policies go together, so
    what the two share (a hard prompt is hard for both) cancels. (None, None): no prompt in common."""
    ids = sorted(before.keys() & after.keys())
    if not ids:
        return None, None
    met_before, met_after, total = (np.array(column) for column in zip(*((before[i][0], after[i][0], before[i][1]) for i in ids)))
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_samples, len(ids)))
    changes = (met_after[draws].sum(axis=1) - met_before[draws].sum(axis=1)) / total[draws].sum(axis=1)
    low, high = np.quantile(changes, [0.025, 0.975])
    return float(low), float(high)


def split_changes(prompts: list[Prompt], champion: list[Completion], challenger: list[Completion], unseen: Collection[str],
                  config: EvalConfig) -> dict[str, float | int | None]:
    """The PairwiseResult fields of each kind's change: prompts counted, and the paired interval."""
    before, after = met_by_prompt(prompts, champion, unseen), met_by_prompt(prompts, challenger, unseen)
    fields: dict[str, float | int | None] = {}
    for kind in ("seen", "unseen"):
        low, high = paired_change_interval(before[kind], after[kind], config.bootstrap_samples, config.seed)
        fields.update({f"n_{kind}_prompts": len(before[kind].keys() & after[kind].keys()),
                       f"{kind}_change_low": low, f"{kind}_change_high": high})
    return fields


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def evaluate_pairwise(
    prompts: list[Prompt],
    champion: list[Completion],
    challenger: list[Completion],
    judge: Judge,
    config: EvalConfig,
    unseen_types: Collection[str] = (),
) -> tuple[PairwiseResult, list[PairVerdict]]:
    """Both policies' held-out answers judged in both orders; constraint satisfaction overall and
    apart for ``unseen_types`` (constraint types no training prompt carried)."""
    champ = {c.prompt_id: c for c in champion}
    chall = {c.prompt_id: c for c in challenger}
    verdicts = judge_both_orders(prompts, {k: c.text for k, c in champ.items()}, {k: c.text for k, c in chall.items()}, judge)
    scores = outcome_scores(verdicts)
    low, high = bootstrap_interval(scores, config.bootstrap_samples, config.seed)
    consistent = sum(
        {"A": "B", "B": "A", "tie": "tie"}[v.forward] == v.backward for v in verdicts
    )
    n = len(verdicts)
    kept = {v.prompt_id for v in verdicts}
    words = {policy: {c.prompt_id: len(c.text.split()) for c in completions} for policy, completions in (("champion", champion), ("challenger", challenger))}
    diffs = [words["challenger"][v.prompt_id] - words["champion"][v.prompt_id] for v in verdicts]
    lc = length_controlled_win_rate(list(scores), diffs)
    by_id = {p.id: p for p in prompts}
    rates = {policy: failure_rates([c for c in completions if c.prompt_id in kept], by_id, judge.verbose_words)
             for policy, completions in (("champion", champion), ("challenger", challenger))}
    kinds = {policy: rates_by_kind(prompts, completions, unseen_types) for policy, completions in (("champion", champion), ("challenger", challenger))}
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
            n_seen_constraints=len(kinds["champion"]["seen"]),
            n_unseen_constraints=len(kinds["champion"]["unseen"]),
            champion_seen_rate=_share(kinds["champion"]["seen"]),
            challenger_seen_rate=_share(kinds["challenger"]["seen"]),
            champion_unseen_rate=_share(kinds["champion"]["unseen"]),
            challenger_unseen_rate=_share(kinds["challenger"]["unseen"]),
            **split_changes(prompts, champion, challenger, unseen_types, config),
        ),
        verdicts,
    )


def _quartiles(words: list[int]) -> list[float]:
    return [float(q) for q in np.quantile(words, [0.25, 0.5, 0.75])] if words else []


def evaluate_unconstrained(
    prompts: list[Prompt],
    champion: list[Completion],
    challenger: list[Completion],
    config: EvalConfig,
    verbose_words: int = 150,
    baseline: list[Completion] | None = None,
    judge: Judge | None = None,
) -> tuple[UnconstrainedResult, list[PairVerdict]]:
    """Both policies' answers to requests with nothing to check: length, failure modes, and the
    verdicts of ``judge`` (a model judge; None: not judged). ``baseline`` holds the round-0
    policy's answers to the same prompts, whose length the challenger's is measured against."""
    by_id = {p.id: p for p in prompts}
    answers = {"champion": champion, "challenger": challenger, "baseline": baseline or []}
    words = {policy: [len(c.text.split()) for c in completions if c.prompt_id in by_id] for policy, completions in answers.items()}
    rates = {policy: failure_rates([c for c in completions if c.prompt_id in by_id], by_id, verbose_words)
             for policy, completions in answers.items() if completions}
    figures: dict = {}
    verdicts: list[PairVerdict] = []
    if judge is not None:
        verdicts = judge_both_orders(prompts, {c.prompt_id: c.text for c in champion}, {c.prompt_id: c.text for c in challenger}, judge)
        scores = outcome_scores(verdicts)
        low, high = bootstrap_interval(scores, config.bootstrap_samples, config.seed)
        figures = {
            "judge": judge.name, "wins": sum(v.outcome == "win" for v in verdicts), "ties": sum(v.outcome == "tie" for v in verdicts),
            "losses": sum(v.outcome == "loss" for v in verdicts), "win_rate": float(scores.mean()) if verdicts else None,
            "win_rate_low": low if verdicts else None, "win_rate_high": high if verdicts else None,
        }
    result = UnconstrainedResult(
        n=len(prompts),
        **{f"{policy}_words": words[policy] for policy in ("champion", "challenger", "baseline")},
        **{f"{policy}_mean_words": _mean(words[policy]) for policy in ("champion", "challenger")},
        baseline_mean_words=_mean(words["baseline"]) if words["baseline"] else None,
        **{f"{policy}_quartiles": _quartiles(words[policy]) for policy in ("champion", "challenger")},
        **{f"{policy}_failure_rates": rates.get(policy, {}) for policy in ("champion", "challenger", "baseline")},
        **figures,
    )
    return result, verdicts


MODEL_JUDGES = ("openai", "llm")  # registered judges that ask a model (tasks/judge.py::JUDGES)


def model_judge_name(config) -> str | None:
    """The configured model judge of the FlywheelConfig ``config`` (evaluate.judge first, then
    judge.name); None when both are offline checkers, whose verdicts on prompts with nothing to
    check would only restate the failure modes."""
    return next((name for name in (config.evaluate.judge, config.judge.name) if name in MODEL_JUDGES), None)


class PairwiseRun(NamedTuple):
    """What ``pairwise_between`` measured and the records behind it."""

    completions: dict[str, list[Completion]]  # held-out answers, by policy
    result: PairwiseResult
    verdicts: list[PairVerdict]
    unconstrained: dict[str, list[Completion]]  # answers to the unconstrained prompts, by policy
    unconstrained_verdicts: list[PairVerdict]


def pairwise_between(
    prompts: list[Prompt],
    champion_checkpoint: str,
    challenger_checkpoint: str,
    config,
    store=None,
    unconstrained: list[Prompt] = (),
    baseline: list[Completion] | None = None,
    champion_answers: tuple[list[Completion], list[Completion]] | None = None,
) -> PairwiseRun:
    """Both checkpoints' answers to ``prompts`` and ``unconstrained`` (sampled by the backend
    ``generate.backend``, one model in memory at a time), judged by the eval's judge (``evaluate.judge``, else ``judge.name``) of the
    FlywheelConfig ``config``; the unconstrained answers by its model judge, if any, and
    measured against ``baseline`` (the round-0 policy's answers to them). ``champion_answers``
    (to ``prompts``, to ``unconstrained``): the champion's, already generated, so it is not loaded."""
    from tasks.judge import build_judge
    from tasks.prompts import unseen_types
    from tasks.sampling.backends import open_backend

    completions, answers = {}, {}
    policies = (("champion", champion_checkpoint), ("challenger", challenger_checkpoint))
    if champion_answers is not None:
        completions["champion"], answers["champion"] = champion_answers
        policies = policies[1:]
    for policy, checkpoint in policies:
        with open_backend(checkpoint, config.generate, config.model) as backend:  # closed (model freed) before the next
            completions[policy], answers[policy] = generate_answer_sets(backend, [prompts, list(unconstrained)], policy, config.evaluate)
    eval_judge = config.evaluate.judge or config.judge.name
    judge = build_judge(config.judge.model_copy(update={"name": eval_judge}), store=store)
    result, verdicts = evaluate_pairwise(
        prompts, completions["champion"], completions["challenger"], judge, config.evaluate, unseen_types(config.prompts)
    )
    unconstrained_verdicts: list[PairVerdict] = []
    if unconstrained:
        name = model_judge_name(config)
        model_judge = None if name is None else judge if name == eval_judge else build_judge(
            config.judge.model_copy(update={"name": name}), store=store)
        found, unconstrained_verdicts = evaluate_unconstrained(
            list(unconstrained), answers["champion"], answers["challenger"], config.evaluate,
            judge.verbose_words, baseline, model_judge,
        )
        result = result.model_copy(update={"unconstrained": found})
    return PairwiseRun(completions, result, verdicts, answers, unconstrained_verdicts)


def write_pairwise(out, run: PairwiseRun) -> None:
    """``completions.jsonl``, ``verdicts.jsonl``, ``pairwise.json`` and, when measured,
    ``unconstrained.jsonl`` (+ ``unconstrained_verdicts.jsonl``) into the staging folder ``out``."""
    write_jsonl(out / layout.COMPLETIONS, run.completions["champion"] + run.completions["challenger"])
    write_jsonl(out / layout.VERDICTS, run.verdicts)
    (out / layout.PAIRWISE).write_text(run.result.model_dump_json(indent=2))
    if run.unconstrained:
        write_jsonl(out / layout.UNCONSTRAINED, run.unconstrained["champion"] + run.unconstrained["challenger"])
    if run.unconstrained_verdicts:
        write_jsonl(out / layout.UNCONSTRAINED_VERDICTS, run.unconstrained_verdicts)


def _figures(record: BaseModel, prefix: str = "") -> dict[str, float]:
    """A record's numbers and its failure rates ("<policy>_failure/<mode>") as flat metric names."""
    metrics = {f"{prefix}{k}": v for k, v in record.model_dump().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name, value in record:
        if name.endswith("_failure_rates"):
            metrics.update({f"{prefix}{name.removesuffix('_rates')}/{mode}": rate for mode, rate in value.items()})
        elif name.endswith("_quartiles") and value:
            policy = name.removesuffix("_quartiles")
            metrics.update({f"{prefix}{policy}_words_{q}": v for q, v in zip(("q1", "median", "q3"), value)})
    return metrics


def pairwise_metrics(result: PairwiseResult) -> dict[str, float]:
    """The result's figures for MLflow: each failure mode's rate per policy among them, and the
    unconstrained prompts' figures as ``unconstrained/...``."""
    metrics = _figures(result)
    if result.unconstrained is not None:
        metrics.update(_figures(result.unconstrained, "unconstrained/"))
    return metrics


def failure_rates(completions: list[Completion], prompts: dict[str, Prompt], verbose_words: int = 150) -> dict[str, float]:
    """Share of completions showing each failure mode, and of those showing any (``prompts`` by id;
    a completion whose prompt is missing is read without it)."""
    from tasks.failure_modes import FAILURE_MODES, detect_failure_modes

    found = [detect_failure_modes(c.text, prompts.get(c.prompt_id), verbose_words, c.truncated) for c in completions]
    rates = {mode: _mean(float(f[mode]) for f in found) for mode in FAILURE_MODES}
    rates["any"] = _mean(float(any(f.values())) for f in found)
    return rates


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


class Example(BaseModel):
    """One held-out prompt answered by both policies: what a reader checks the scores against."""

    prompt_id: str
    prompt: str
    outcome: str  # the later policy's, by the judge: "win", "tie" or "loss"
    before: str  # the earlier policy's answer ("champion" in the records)
    before_score: float  # share of the prompt's constraints it met
    after: str
    after_score: float


def telling_examples(prompts: list[Prompt], completions: dict[str, list[Completion]], verdicts: list[PairVerdict],
                     n: int = 3) -> tuple[list[Example], list[Example]]:
    """The ``n`` held-out prompts where the later policy gained most on the earlier one, and the ``n``
    where it lost most: by the change in constraint satisfaction, then the judge's outcome."""
    before = {c.prompt_id: c for c in completions["champion"]}
    after = {c.prompt_id: c for c in completions["challenger"]}
    outcome = {v.prompt_id: v.outcome for v in verdicts}
    examples = [
        Example(prompt_id=p.id, prompt=p.text, outcome=outcome[p.id], before=before[p.id].text,
                before_score=before[p.id].constraint_score, after=after[p.id].text, after_score=after[p.id].constraint_score)
        for p in prompts if p.id in outcome and p.id in before and p.id in after
    ]
    rank = {"loss": 0, "tie": 1, "win": 2}
    examples.sort(key=lambda e: (e.after_score - e.before_score, rank[e.outcome], e.prompt_id))
    return examples[::-1][:n], examples[:n]
