"""`judge`: which judge compares the candidates, and the API judge's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from infra.settings.base import Section


class OpenAIJudgeConfig(Section):
    base_url: str | None = Field(None, description="OpenAI-compatible API base URL (vLLM, transformers serve, ...); None: OpenAI.")
    model: str = Field("gpt-4o-mini", description="Judge model name as the server knows it (for `vllm serve`, the model it started with). "
        "Part of every judgment's cache key: another model judges the pairs afresh.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key; unused when api_key_block is set, not needed "
        "when base_url names a local server.")
    api_key_block: str | None = Field(None, description="Prefect Secret block holding the API key (used when set).")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (>= 0); 0 makes verdicts as repeatable as the "
        "server allows. Each pair is judged in both orders and disagreeing orders count as a tie, so a higher temperature "
        "turns more pairs into ties.")
    max_tokens: int = Field(400, ge=16, description="Longest judge answer, in tokens (its reasoning and the JSON verdict). An "
        "answer cut short does not parse and gets one repair request; it also counts in each request's estimate against "
        "tokens_per_minute.")
    criteria: list[str] = Field(
        [
            "Helpfulness: does the response address the user's request?",
            "Accuracy: is what it says correct, and does it follow the request's constraints?",
            "Clarity: is it easy to read and free of padding?",
        ],
        min_length=1,
        description="What the judge weighs, one line each, listed in the judge prompt (the template's {criteria}). "
        "Part of what is sent, so a change judges the pairs afresh.",
    )
    template: Path | None = Field(None, description="Prompt template file (default: tasks/judge_templates/pairwise.txt).")
    max_in_flight: int = Field(
        16, ge=1, description="Judge requests awaiting an answer at once (every pair sends two, one per order); "
        "requests_per_minute and tokens_per_minute still apply.",
    )
    requests_per_minute: float = Field(
        600, gt=0, description="Requests sent per minute at most, over a sliding one-minute window that both orders of "
        "every pair, retries and repair requests share. Set it to the API's rate limit, so 429s are avoided rather than retried.",
    )
    tokens_per_minute: float = Field(
        400_000, gt=0, description="Tokens per minute at most, over the same window: each request counts its prompt "
        "(estimated as 4 characters a token) plus max_tokens, before it is sent. Set it to the API's token limit.",
    )
    timeout_s: float = Field(
        60, gt=0, description="Seconds one request may take; a timeout is retried like a 429 and counts against max_retries.",
    )
    max_retries: int = Field(5, ge=0, description="Retries of 429, 5xx and timeouts (exponential backoff with jitter, Retry-After honoured).")
    backoff_s: float = Field(1.0, gt=0, description="Seconds of the first retry's wait; it doubles per retry, times a jitter "
        "of 0.5-1.5. A Retry-After header from the server replaces it.")
    max_failure_share: float = Field(0.2, ge=0, le=1, description="The stage fails when more pairs than this share could not be judged.")
    price_per_million_input: float = Field(0.15, ge=0, description="USD per million prompt tokens, for the cost estimate.")
    price_per_million_output: float = Field(0.60, ge=0, description="USD per million completion tokens, for the cost estimate (with "
        "price_per_million_input; the tokens are those the server reports).")


class JudgeConfig(Section):
    name: str = Field("verifier", description="Registered judge: 'verifier' (offline, IFEval checkers) or 'openai' (any OpenAI-compatible API).")
    openai: OpenAIJudgeConfig = Field(default_factory=OpenAIJudgeConfig, description="Settings of the 'openai' judge.")
    compare_with: list[str] = Field(
        default_factory=list,
        description="Other registered judges run on the same pairs; their agreement with this one (rate and "
        "Cohen's kappa) is logged, to calibrate an API judge against the verifier or another model.",
    )
    tie_margin: float = Field(
        0.05, ge=0, description="Score differences at or below this are ties (verifier judge)."
    )
    failure_penalty: float = Field(
        0.25, ge=0,
        description="Score taken off per failure mode found (tasks/failure_modes.py: verbose, sycophantic, evasive, "
        "repetitive, degenerate, stuffed, off_topic, echo, too_short; truncated is not in the text, and the filter "
        "never lets a truncated candidate be chosen).",
    )
    failure_penalties: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Per-mode penalties that replace failure_penalty for the modes named, e.g. {stuffed: 0.5}.",
    )
    verbose_words: int = Field(
        150, ge=1, description="Responses longer than this many words count as verbose."
    )
