"""generate-candidates: k sampled responses per prompt from the current policy.

Reads: the champion checkpoint (through an open generation backend) and the round's training prompts.
Writes: ``candidates.jsonl`` (one Candidate a line: prompt, index, temperature, text, new tokens,
whether it was cut at ``generate.max_new_tokens``); ``summarize_candidates`` gives the stage's
summary record (``GenerateSummary``: count, mean tokens, tokens per second, truncated share).

Candidate i of a prompt is sampled at temperature i of ``generate.temperatures`` (cycled). The
backend does the sampling (``tasks/sampling/``: the ``hf`` backend's batched sampler with a
prompt's k candidates sharing one prefill, or a server or engine).
"""

from __future__ import annotations

from pydantic import BaseModel

from infra.records import Candidate, Prompt
from infra.settings import GenerateConfig
from tasks.sampling.requests import SampleRequest


def generate_candidates(backend, prompts: list[Prompt], config: GenerateConfig, seed: int, progress: bool = True) -> list[Candidate]:
    """k candidates per prompt from ``backend`` (a tasks.sampling.backends.SamplingBackend), candidate i
    sampled at temperature i (cycled)."""
    temps = [config.temperatures[i % len(config.temperatures)] for i in range(config.n_candidates)]
    requests = [
        SampleRequest(key=(p.id, i), prompt=p.text, temperature=temps[i])
        for p in prompts
        for i in range(config.n_candidates)
    ]
    decoded = backend.sample(requests, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=seed,
                             top_p=config.top_p, progress="generate-candidates" if progress else None)
    return [
        Candidate(prompt_id=r.key[0], index=r.key[1], text=decoded[r.key].text, temperature=r.temperature,
                  n_tokens=decoded[r.key].n_tokens, truncated=decoded[r.key].truncated)
        for r in requests
    ]


class GenerateSummary(BaseModel):
    """The generate stage's figures, which the stage runner saves and logs as metrics."""

    n_candidates: int
    mean_tokens: float
    tokens_per_s: float
    truncated_share: float | None = None  # cut off at max_new_tokens (None: a result from before it was counted)
    seconds: float


def summarize_candidates(candidates: list[Candidate], seconds: float) -> GenerateSummary:
    n_tokens = sum(c.n_tokens for c in candidates)
    return GenerateSummary(
        n_candidates=len(candidates),
        mean_tokens=n_tokens / max(len(candidates), 1),
        tokens_per_s=n_tokens / seconds if seconds > 0 else 0.0,
        truncated_share=sum(c.truncated for c in candidates) / max(len(candidates), 1),
        seconds=seconds,
    )
