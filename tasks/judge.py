"""judge: compare candidates for the same prompt, pair by pair.

Reads: the round's prompts and ``candidates.jsonl``.
Writes: ``judgments.jsonl`` (one Judgment per compared pair of candidates).

A ``Judge`` maps (prompt, response A, response B) to a verdict with scores and
a reason. Judges register by name (``JUDGES``) and configs refer to them so;
the default ``verifier`` judge runs offline: a response scores the share of its
prompt's constraints it satisfies (partial credit: IFEval's checkers and Flywheel's own, a
prompt carrying one to four), minus a penalty for each failure mode it shows (verbose, sycophantic, evasive, repetitive, degenerate, and
the gaming a checker invites: stuffed, off_topic, echo, too_short).
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass

from pydantic import BaseModel
from tqdm.auto import tqdm

from infra.records import Candidate, Judgment, Prompt, Verdict
from infra.registry import Registry
from infra.settings import JudgeConfig
from tasks.constraints import constraint_score
from tasks.failure_modes import FAILURE_MODES, detect_failure_modes


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    score_a: float
    score_b: float
    reason: str
    consistent: bool | None = None  # both orders agreed (judges that ask twice)


class Judge(abc.ABC):
    """Compares two responses to a prompt; built from the ``judge`` section (``JudgeConfig``)."""

    name: str = "judge"

    def __init__(self, config: JudgeConfig):
        # Responses longer than this many words are verbose, in the judge's scores and in the
        # eval's failure rates of the answers it judges (whichever judge it is).
        self.verbose_words = config.verbose_words

    @abc.abstractmethod
    def compare(self, prompt: Prompt, response_a: str, response_b: str) -> Comparison:
        """Which of two responses to ``prompt`` is better."""

    def compare_many(self, items: list[tuple[Prompt, str, str]]) -> list[Comparison | None]:
        """Many comparisons; None for a pair the judge could not decide (left out).
        Judges behind an API override this to run them concurrently."""
        return [self.compare(*item) for item in items]

    def summary(self, n_pairs: int) -> dict[str, float]:
        """Figures about the judging itself (requests, cost, failures), named without the stage prefix."""
        return {}

    def check_failures(self, n_pairs: int) -> None:
        """Raise when too many pairs could not be judged."""


JUDGES: Registry[type[Judge]] = Registry("judge", base=Judge)
JUDGES.add_lazy("openai", "tasks.llm_judge:OpenAIJudge")
JUDGES.add_lazy("llm", "tasks.llm_judge:OpenAIJudge")


@JUDGES.register("verifier", "ifeval")
class VerifierJudge(Judge):
    """Scores responses with machine checks; no model, no network."""

    name = "verifier"

    def __init__(self, config: JudgeConfig, store=None):
        unknown = sorted(set(config.failure_penalties) - set(FAILURE_MODES))
        if unknown:
            raise ValueError(f"judge.failure_penalties: unknown failure modes {unknown}; known: {', '.join(FAILURE_MODES)}")
        super().__init__(config)
        self.config = config
        self._scores: dict[tuple[str, str], tuple[float, str]] = {}

    def score(self, prompt: Prompt, response: str) -> tuple[float, str]:
        """Pointwise score of one response; memoised since each candidate meets k-1 others."""
        key = (prompt.id, response)
        if key not in self._scores:
            self._scores[key] = self._score(prompt, response)
        return self._scores[key]

    def _score(self, prompt: Prompt, response: str) -> tuple[float, str]:
        satisfied = constraint_score(response, prompt.constraints)
        modes = [m for m, found in detect_failure_modes(response, prompt, self.verbose_words).items() if found]
        score = satisfied - sum(self.penalty(m) for m in modes)
        why = f"constraints {satisfied:.2f}" + (f", failure modes: {', '.join(modes)}" if modes else "")
        return score, why

    def penalty(self, mode: str) -> float:
        return self.config.failure_penalties.get(mode, self.config.failure_penalty)

    def compare(self, prompt: Prompt, response_a: str, response_b: str) -> Comparison:
        score_a, why_a = self.score(prompt, response_a)
        score_b, why_b = self.score(prompt, response_b)
        if abs(score_a - score_b) <= self.config.tie_margin:
            verdict: Verdict = "tie"
        else:
            verdict = "A" if score_a > score_b else "B"
        return Comparison(verdict, score_a, score_b, f"A: {why_a}; B: {why_b}")


def build_judge(config: JudgeConfig, store=None) -> Judge:
    """The configured judge; ``store`` (an artifact store) lets API judges cache verdicts."""
    return JUDGES.get(config.name)(config, store=store)


def judge_pairs(
    prompts: list[Prompt], candidates: list[Candidate], judge: Judge, progress: bool = True
) -> list[Judgment]:
    """Judge every pair of candidates of every prompt (k*(k-1)/2 comparisons a prompt)."""
    by_prompt: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    prompt_by_id = {p.id: p for p in prompts}
    missing = sorted(set(by_prompt) - set(prompt_by_id))
    if missing:
        raise ValueError(f"candidates refer to unknown prompts: {', '.join(missing[:5])}")
    pairs = [
        (prompt_by_id[prompt_id], a, b)
        for prompt_id, group in by_prompt.items()
        for a, b in itertools.combinations(sorted(group, key=lambda c: c.index), 2)
    ]
    results: list[Comparison | None] = []
    chunk = 64  # progress in chunks; an API judge runs each chunk concurrently
    for start in tqdm(range(0, len(pairs), chunk), desc="judge", unit="chunk", disable=not progress):
        results += judge.compare_many([(p, a.text, b.text) for p, a, b in pairs[start : start + chunk]])
    judgments = []
    for (prompt, a, b), result in zip(pairs, results):
        if result is None:
            continue
        judgments.append(
            Judgment(
                prompt_id=prompt.id,
                index_a=a.index,
                index_b=b.index,
                verdict=result.verdict,
                score_a=result.score_a,
                score_b=result.score_b,
                reason=result.reason,
                judge=judge.name,
                consistent=result.consistent,
            )
        )
    return judgments


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Agreement beyond chance between two judges' verdicts on the same items."""
    n = len(first)
    if n == 0:
        return float("nan")
    observed = sum(a == b for a, b in zip(first, second)) / n
    labels = set(first) | set(second)
    expected = sum((first.count(label) / n) * (second.count(label) / n) for label in labels)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def judge_agreement(judge: Judge, other: Judge, pairs: list[tuple[Prompt, str, str]]) -> dict[str, float]:
    """Rate and Cohen's kappa of agreement of two judges on the same pairs (undecided pairs left out)."""
    mine, theirs = judge.compare_many(pairs), other.compare_many(pairs)
    both = [(m.verdict, t.verdict) for m, t in zip(mine, theirs) if m is not None and t is not None]
    first, second = [m for m, _ in both], [t for _, t in both]
    return {
        "n": len(both),
        "agreement": sum(a == b for a, b in both) / len(both) if both else float("nan"),
        "kappa": cohen_kappa(first, second),
    }


class JudgeSummary(BaseModel):
    """The judging's figures: comparisons, ties, consistency, the judge's own (requests, cost), agreement."""

    figures: dict[str, float]


def judge_summary(judgments: list[Judgment]) -> dict[str, float]:
    n = len(judgments)
    ties = sum(j.verdict == "tie" for j in judgments)
    figures = {"n_comparisons": n, "tie_rate": ties / n if n else 0.0}
    checked = [j.consistent for j in judgments if j.consistent is not None]
    if checked:
        figures["consistency_rate"] = sum(checked) / len(checked)
    return figures
