"""What a generation backend is asked and answers, and how requests are grouped.

A stage asks for ``SampleRequest``s (a key of its own, a prompt, a temperature) and gets back a
``Decoded`` per key, whichever backend sampled it. Servers and engines take a prompt's samples at
one temperature as one request (``group_requests``); the ``hf`` backend decodes batches of
requests of similar length (``length_grouped_batches``). No torch here: every backend and stage
imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class SampleRequest:
    key: tuple  # caller's handle, returned with the text
    prompt: str
    temperature: float


class Decoded(NamedTuple):
    text: str
    n_tokens: int  # new tokens before EOS
    truncated: bool  # stopped at max_new_tokens without EOS


def render_chat(tokenizer, prompt_text: str) -> str:
    """``prompt_text`` as the user's turn in the tokenizer's chat template, ready for the answer."""
    messages = [{"role": "user", "content": prompt_text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class PromptGroup(NamedTuple):
    """The requests that ask one prompt at one temperature: one request to a server (``n`` samples)."""

    prompt: str
    temperature: float
    keys: list[tuple]


def group_requests(requests: list[SampleRequest]) -> list[PromptGroup]:
    """Requests grouped by (prompt, temperature), in the order each group first appears."""
    groups: dict[tuple[str, float], list[tuple]] = {}
    for r in requests:
        groups.setdefault((r.prompt, r.temperature), []).append(r.key)
    return [PromptGroup(prompt, temperature, keys) for (prompt, temperature), keys in groups.items()]


def length_grouped_batches(requests: list[SampleRequest], lengths: list[int], batch_size: int):
    """Batches sorted by prompt length to keep padding small; greedy (temperature 0) and
    sampled requests never share a batch, sampled ones at different temperatures may."""
    greedy = lambda i: requests[i].temperature <= 0  # noqa: E731
    order = sorted(range(len(requests)), key=lambda i: (greedy(i), lengths[i], i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or greedy(batch[0]) != greedy(i)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
