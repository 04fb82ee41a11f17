"""An LLM judge over any OpenAI-compatible API: position-fair, concurrent, fault-tolerant,
and never paying twice for the same judgment.

* Every pair is judged in both orders; agreeing verdicts stand, disagreeing ones are a tie.
* Requests run concurrently (``max_in_flight``) within request and token budgets per
  minute; 429, 5xx and timeouts are retried with exponential backoff and jitter, honouring
  Retry-After. A pair that still fails, or whose answer stays unparseable after one repair
  request, is left out and counted; the stage fails only past ``max_failure_share``.
* Each single-order judgment is cached under a hash of (model, template, prompt, the two
  responses, order) in the artifact store, so a rerun sends nothing it already sent.
* Responses are fenced with a marker derived from a hash of the whole request, which a
  response cannot contain, so it cannot close its own section; the verdict is read only
  from the judge's JSON answer, validated with pydantic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from infra.records import Prompt
from infra.secrets import api_key
from infra.settings import JudgeConfig, OpenAIJudgeConfig
from tasks.judge import Comparison, Judge

DEFAULT_TEMPLATE = Path(__file__).with_name("judge_templates") / "pairwise.txt"
CACHE_PREFIX = "judge-cache"


class JudgeAnswer(BaseModel):
    reasoning: str = ""
    verdict: Literal["A", "B", "tie"]
    confidence: float = Field(0.5, ge=0, le=1)


class JudgeError(RuntimeError):
    """The judge could not be reached or answered nothing usable."""


@dataclass
class JudgeStats:
    requests: int = 0
    retries: int = 0
    repairs: int = 0
    cache_hits: int = 0
    invalid: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def cost(self, config: OpenAIJudgeConfig) -> float:
        return (self.prompt_tokens * config.price_per_million_input + self.completion_tokens * config.price_per_million_output) / 1e6


def fence_for(*parts: str) -> str:
    """A section marker no response can forge: it hashes the very text it encloses."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def build_judge_prompt(template: str, prompt: str, response_a: str, response_b: str, criteria: list[str]) -> str:
    fence = fence_for(prompt, response_a, response_b)
    return template.format(
        fence=fence, prompt=prompt, response_a=response_a, response_b=response_b,
        criteria="\n".join(f"- {c}" for c in criteria),
    )


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_answer(text: str) -> JudgeAnswer:
    """The judge's JSON verdict; raises ValueError when there is none that validates."""
    text = (text or "").strip()
    candidates = [text]
    match = _JSON_OBJECT.search(text)
    if match:
        candidates.append(match.group(0))
    last: Exception | None = None
    for candidate in candidates:
        try:
            return JudgeAnswer.model_validate(json.loads(candidate))
        except (json.JSONDecodeError, ValidationError, TypeError) as exc:
            last = exc
    raise ValueError(f"no valid verdict JSON in the judge's answer ({last})")


class RateBudget:
    """Requests and tokens per minute, as a sliding one-minute window."""

    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.events: list[tuple[float, int]] = []
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        while True:
            async with self.lock:
                now = time.monotonic()
                self.events = [(t, n) for t, n in self.events if now - t < 60]
                used = sum(n for _, n in self.events)
                if len(self.events) < self.rpm and (used + tokens <= self.tpm or not self.events):
                    self.events.append((now, tokens))
                    return
                wait = 60 - (now - self.events[0][0]) + 0.01
            await asyncio.sleep(min(wait, 1.0))


class OpenAIJudge(Judge):
    """Pairwise verdicts from a model behind an OpenAI-compatible chat completions API."""

    name = "openai"

    def __init__(self, config: JudgeConfig, store=None):
        super().__init__(config)
        self.config = config.openai
        self.store = store
        self.template = (self.config.template or DEFAULT_TEMPLATE).read_text()
        self.template_hash = hashlib.sha256(self.template.encode()).hexdigest()[:12]
        self.stats = JudgeStats()
        self.name = f"openai:{self.config.model}"

    # --- one request -------------------------------------------------------------------------

    def cache_key(self, prompt: str, first: str, second: str) -> str:
        """Keyed by what is sent: model, template, prompt, and the responses in the order shown
        (so the pairwise eval's challenger-first pass reuses the judge's second order)."""
        digest = hashlib.sha256(json.dumps([self.config.model, self.template_hash, prompt, first, second]).encode()).hexdigest()
        return f"{CACHE_PREFIX}/{digest[:2]}/{digest}.json"

    async def _request(self, client, budget: RateBudget, messages: list[dict]) -> str:
        import openai

        estimate = sum(len(m["content"]) for m in messages) // 4 + self.config.max_tokens
        for attempt in range(self.config.max_retries + 1):
            await budget.acquire(estimate)
            self.stats.requests += 1
            try:
                response = await client.chat.completions.create(
                    model=self.config.model, messages=messages,
                    temperature=self.config.temperature, max_tokens=self.config.max_tokens,
                )
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError) as exc:
                if attempt == self.config.max_retries:
                    raise JudgeError(f"{type(exc).__name__} after {attempt + 1} attempts: {exc}") from exc
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt, exc))
                continue
            except openai.APIStatusError as exc:  # 4xx other than 429: retrying will not help
                raise JudgeError(f"HTTP {exc.status_code}: {exc.message}") from exc
            if response.usage is not None:
                self.stats.prompt_tokens += response.usage.prompt_tokens or 0
                self.stats.completion_tokens += response.usage.completion_tokens or 0
            return response.choices[0].message.content or ""
        raise JudgeError("unreachable")

    def _backoff(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return float(retry_after)
            except ValueError:
                pass
        return self.config.backoff_s * (2**attempt) * (0.5 + random.random())

    async def _judge_once(self, client, budget, semaphore, prompt: str, a: str, b: str) -> JudgeAnswer | None:
        """One order of one pair: from the cache, or asked (with one repair); None when invalid."""
        key = self.cache_key(prompt, a, b)
        if self.store is not None:
            # Store I/O (S3 on the real stack) off the event loop, so it never stalls the requests in flight.
            cached = await asyncio.to_thread(self.store.read_json, key)
            if cached is not None:
                self.stats.cache_hits += 1
                return JudgeAnswer.model_validate(cached) if cached.get("verdict") else None
        messages = [{"role": "user", "content": build_judge_prompt(self.template, prompt, a, b, self.config.criteria)}]
        async with semaphore:
            text = await self._request(client, budget, messages)
            try:
                answer = parse_answer(text)
            except ValueError as err:
                self.stats.repairs += 1
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That answer could not be read: {err}. Reply with only the JSON object "
                     '{"reasoning": ..., "verdict": "A" | "B" | "tie", "confidence": 0..1}.'},
                ]
                try:
                    answer = parse_answer(await self._request(client, budget, messages))
                except ValueError:
                    answer = None
        if answer is None:
            self.stats.invalid += 1
        if self.store is not None:
            await asyncio.to_thread(self.store.write_json, key, answer.model_dump() if answer else {"verdict": None})
        return answer

    # --- many pairs, both orders ---------------------------------------------------------------

    async def _judge_all(self, items: list[tuple[Prompt, str, str]]) -> list[Comparison | None]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=api_key(self.config), max_retries=0, timeout=self.config.timeout_s)
        budget = RateBudget(self.config.requests_per_minute, self.config.tokens_per_minute)
        semaphore = asyncio.Semaphore(self.config.max_in_flight)

        async def both_orders(prompt: Prompt, a: str, b: str) -> Comparison | None:
            try:
                forward, backward = await asyncio.gather(
                    self._judge_once(client, budget, semaphore, prompt.text, a, b),
                    self._judge_once(client, budget, semaphore, prompt.text, b, a),
                )
            except JudgeError as err:
                self.stats.failed += 1
                self.stats.errors.append(str(err))
                return None
            if forward is None or backward is None:
                self.stats.failed += 1
                return None
            flipped = {"A": "B", "B": "A", "tie": "tie"}[backward.verdict]
            verdict = forward.verdict if forward.verdict == flipped else "tie"
            score_a = {"A": 1.0, "B": 0.0, "tie": 0.5}[verdict]
            reason = f"AB: {forward.verdict} ({forward.reasoning}); BA: {backward.verdict} ({backward.reasoning})"
            return Comparison(verdict, score_a, 1.0 - score_a, reason, consistent=forward.verdict == flipped)

        try:
            return await asyncio.gather(*(both_orders(*item) for item in items))
        finally:
            await client.close()

    def compare_many(self, items: list[tuple[Prompt, str, str]]) -> list[Comparison | None]:
        return asyncio.run(self._judge_all(items))

    def compare(self, prompt: Prompt, response_a: str, response_b: str) -> Comparison:
        [result] = self.compare_many([(prompt, response_a, response_b)])
        if result is None:
            raise JudgeError(f"the judge could not compare the pair for prompt {prompt.id}")
        return result

    def summary(self, n_pairs: int) -> dict[str, float]:
        s = self.stats
        return {
            "requests": s.requests, "retries": s.retries, "repairs": s.repairs,
            "cache_hits": s.cache_hits, "invalid": s.invalid, "failed_pairs": s.failed,
            "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "cost_usd": s.cost(self.config), "failed_share": s.failed / n_pairs if n_pairs else 0.0,
        }

    def check_failures(self, n_pairs: int) -> None:
        share = self.stats.failed / n_pairs if n_pairs else 0.0
        if share > self.config.max_failure_share:
            detail = f"; last error: {self.stats.errors[-1]}" if self.stats.errors else ""
            raise JudgeError(
                f"judge {self.name} at {self.config.base_url or 'api.openai.com'} could not judge "
                f"{self.stats.failed} of {n_pairs} pairs ({share:.0%} > judge.openai.max_failure_share "
                f"{self.config.max_failure_share:.0%}){detail}"
            )
