"""Generation backend 'openai': samples from an OpenAI-compatible server (``vllm serve``,
``transformers serve``, ...) through the openai client the judge uses.

A prompt's samples at one temperature are one request with ``n`` samples (the server encodes the
prompt once for all of them); servers that ignore or refuse ``n`` (``transformers serve``) take one request
per sample with ``generate.openai.use_n: false``. Requests run concurrently
(``generate.openai.max_in_flight``); the client retries 429, 5xx and timeouts with backoff. The
API key comes from ``api_key_block`` or ``api_key_env`` and is never logged.
"""

from __future__ import annotations

import asyncio

from infra.secrets import api_key
from tasks.sampling.backends import SamplingBackend
from tasks.sampling.requests import Decoded, PromptGroup, group_requests


class GenerationServerError(RuntimeError):
    """The server refused or failed a sampling request; the message says which and why."""


class OpenAIBackend(SamplingBackend):
    name = "openai"

    def __init__(self, checkpoint, config, model):
        super().__init__(checkpoint, config, model)
        self.settings = config.openai
        self.model_name = self.settings.model or checkpoint
        self._tokenizer = None

    def sample(self, requests, max_new_tokens, batch_size, seed, top_p=1.0, progress=None):
        groups = group_requests(requests)
        answers = asyncio.run(self._sample_all(groups, max_new_tokens, seed, top_p))
        return {key: decoded for group, found in zip(groups, answers) for key, decoded in zip(group.keys, found)}

    async def _sample_all(self, groups: list[PromptGroup], max_new_tokens: int, seed: int, top_p: float) -> list[list[Decoded]]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=api_key(self.settings),
                                    timeout=self.settings.timeout_s, max_retries=self.settings.max_retries)
        semaphore = asyncio.Semaphore(self.settings.max_in_flight)

        async def one(no: int, group: PromptGroup, n: int, offset: int) -> list[Decoded]:
            async with semaphore:
                return await self._request(client, group, n, max_new_tokens, seed * 100_003 + no * 1009 + offset, top_p)

        async def whole(no: int, group: PromptGroup) -> list[Decoded]:
            if self.settings.use_n or len(group.keys) == 1:
                return await one(no, group, len(group.keys), 0)
            parts = await asyncio.gather(*(one(no, group, 1, i) for i in range(len(group.keys))))
            return [d for part in parts for d in part]

        try:
            return await asyncio.gather(*(whole(no, g) for no, g in enumerate(groups)))
        finally:
            await client.close()

    async def _request(self, client, group: PromptGroup, n: int, max_new_tokens: int, seed: int, top_p: float) -> list[Decoded]:
        import openai

        greedy = group.temperature <= 0
        extra = {"n": n} if n > 1 else {}
        hint = " (a server that ignores or refuses `n`, such as transformers serve, needs generate.openai.use_n: false)" if extra else ""
        try:
            response = await client.chat.completions.create(
                model=self.model_name, messages=[{"role": "user", "content": group.prompt}], max_tokens=max_new_tokens,
                temperature=0.0 if greedy else group.temperature, top_p=1.0 if greedy else top_p, seed=seed, **extra,
            )
        except openai.APIStatusError as exc:
            raise GenerationServerError(
                f"generation server {self.settings.base_url or 'OpenAI'} refused a request for model {self.model_name!r}: "
                f"HTTP {exc.status_code}: {exc.message}{hint}") from exc
        except openai.APIError as exc:
            raise GenerationServerError(f"generation server {self.settings.base_url or 'OpenAI'} failed: {exc}") from exc
        if len(response.choices) != n:
            raise GenerationServerError(f"generation server {self.settings.base_url or 'OpenAI'} answered "
                                        f"{len(response.choices)} samples where {n} were asked{hint}")
        choices = sorted(response.choices, key=lambda c: c.index)
        return [self._decoded(c.message.content or "", c.finish_reason, max_new_tokens) for c in choices]

    def _decoded(self, text: str, finish_reason: str | None, max_new_tokens: int) -> Decoded:
        truncated = finish_reason == "length"
        # Servers report tokens per request, not per sample: count this sample's with the policy's tokenizer.
        n_tokens = max_new_tokens if truncated else len(self.tokenizer.encode(text, add_special_tokens=False))
        return Decoded(text.strip(), n_tokens, truncated)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from infra.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.checkpoint)
        return self._tokenizer
