"""generate-candidates: k sampled responses per prompt from the current policy.

Reads: the champion checkpoint and the round's training prompts.
Writes: ``candidates.jsonl`` (one Candidate a line).

Decoding is batched: prompts are rendered with the tokenizer's chat template,
left-padded, and grouped by token length so a batch wastes little on padding; the k
candidates of a prompt share one prefill (its KV cache is computed once and copied to
each of its rows), the opening every prompt of a batch shares (the chat template's system
prompt) is encoded once for the batch, and a row that has ended leaves the batch rather than being decoded to the
longest row's end (``decode``, a loop of the model's forward passes: ``model.generate`` cannot drop
rows), its KV cache written in place (``tasks/kv_cache.py``). The backends that sample (this one, ``hf``, and servers or engines) are
in ``tasks/backends.py``.
Each candidate index has its own temperature; one batch mixes temperatures, since
``RowTemperatureNucleus`` applies a temperature per row and nucleus (top-p)
sampling from a top-k shortlist, exactly, without the full-vocabulary sort that
dominates a CPU decoding step otherwise (120 ms of 280 ms for 64 rows of 49k), and
draws each row's token with one uniform number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from infra.records import Candidate, Prompt
from infra.settings import GenerateConfig

# A sort of the whole vocabulary (49k) costs about 1.5 ms a row on a 2-core CPU, a top-4096 0.3 ms.
# Sampling the bench's 16 prompts x 4 temperatures (top_p 0.95, bf16), 541 of 3,814 rows needed
# more than the 256-token shortlist, 16 more than 4,096 and none more than 8,192.
LONG_SHORTLIST = 16


class RowTemperatureNucleus:
    """Logits processor: divide row i by temperature i, then keep the smallest set of tokens
    whose probability reaches ``top_p`` (as transformers' TopPLogitsWarper does).

    The set is found among the ``shortlist`` most likely tokens (torch.topk); a row whose
    shortlist holds less than ``top_p`` of the mass falls back to a full sort, so the result
    is exact either way."""

    def __init__(self, temperatures: torch.Tensor, top_p: float, shortlist: int = 256):
        self.temperatures = temperatures.float().unsqueeze(1)
        self.top_p = top_p
        self.shortlist = shortlist

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The scores with every token outside its row's nucleus at -inf (a logits processor)."""
        scores = scores.float() / self.temperatures.to(scores.device)
        if self.top_p >= 1.0:
            return scores
        probs = scores.softmax(dim=-1)
        remove = torch.ones_like(scores, dtype=torch.bool)
        for rows, ranked_probs, ranked_idx in self._ranked(probs):
            row_remove = torch.ones((len(ranked_probs), probs.shape[-1]), dtype=torch.bool, device=probs.device)
            remove[rows] = row_remove.scatter_(1, ranked_idx, _outside_nucleus(ranked_probs, self.top_p))
        return scores.masked_fill(remove, float("-inf"))

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token a row, drawn from what ``__call__`` leaves, with one uniform number a row (by
        the kept tokens' cumulative distribution). ``torch.multinomial`` draws a random number per
        vocabulary entry: 60 of the 100 ms that sampling took in a 64-row CPU step over 49k tokens."""
        probs = (logits.float() / self.temperatures.to(logits.device)).softmax(dim=-1)
        uniform = torch.rand(len(probs), 1, device=probs.device)
        if self.top_p >= 1.0:
            return _draw(probs, uniform)
        tokens = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        for rows, ranked_probs, ranked_idx in self._ranked(probs):
            kept = ranked_probs.masked_fill(_outside_nucleus(ranked_probs, self.top_p), 0)
            tokens[rows] = ranked_idx.gather(1, _draw(kept, uniform[rows]).unsqueeze(1)).squeeze(1)
        return tokens

    def _ranked(self, probs: torch.Tensor):
        """(rows, probabilities high to low, their token ids): every row's shortlist first, then for
        the rows whose shortlist holds less than ``top_p`` a longer one (``LONG_SHORTLIST`` times as
        long), then a full sort for those whose longer list still does; each replaces the last."""
        top_probs, top_idx = probs.topk(min(self.shortlist, probs.shape[-1]), dim=-1)
        yield slice(None), top_probs, top_idx
        rows = (top_probs.sum(-1) < self.top_p).nonzero().squeeze(1)
        longer = self.shortlist * LONG_SHORTLIST
        if len(rows) and longer < probs.shape[-1]:
            ranked_probs, ranked_idx = probs[rows].topk(longer, dim=-1)
            yield rows, ranked_probs, ranked_idx
            rows = rows[ranked_probs.sum(-1) < self.top_p]
        if len(rows):
            yield (rows, *probs[rows].sort(dim=-1, descending=True))


def _outside_nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Of probabilities sorted high to low, those after the first ones that already reach ``top_p``."""
    return (sorted_probs.cumsum(-1) - sorted_probs) >= top_p


def _draw(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row, index i with probability weights[i] / the row's sum, given a uniform number in [0, 1) a row."""
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    # Rounding can carry u * total up to total, past every index of positive weight: hold it below.
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True).squeeze(1)


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
    messages = [{"role": "user", "content": prompt_text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


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


@torch.inference_mode()
def sample_batched(
    model,
    tokenizer,
    requests: list[SampleRequest],
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    top_p: float = 1.0,
    progress: str | None = None,
    share_prefill: bool = True,
) -> dict[tuple, Decoded]:
    """Decode every request; returns key -> Decoded (text, new tokens, cut at the budget). Temperature 0 is greedy.

    With ``share_prefill`` the rows of a batch that ask the same prompt (the k candidates of a
    prompt) share one prefill: the batch's distinct prompts are encoded once and their KV cache is
    copied to every row that asks them, instead of each row encoding its prompt again. The rows,
    their order and their random numbers are the same either way, so are the samples, up to
    rounding: the prefill groups its arithmetic differently, and where a distribution is flat a
    last-bit difference can move a draw across a token boundary."""
    rendered = [render_chat(tokenizer, r.prompt) for r in requests]
    encoded = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)
    results: dict[tuple, Decoded] = {}
    bar = tqdm(total=len(requests), desc=progress, unit="seq", disable=progress is None)
    for batch_no, batch in enumerate(length_grouped_batches(requests, lengths, batch_size)):
        temperatures = torch.tensor([requests[i].temperature for i in batch])
        prompts = [encoded[i] for i in batch]
        prefill = shared_prefill(model, prompts, tokenizer.pad_token_id, device, room=max_new_tokens + 1) if share_prefill else None
        if prefill is None:
            prefill = Prefilled(None, *left_padded(prompts, tokenizer.pad_token_id, device))
        # A seed per batch: results do not depend on what ran before in the process.
        torch.manual_seed(seed * 100_003 + batch_no)
        # Temperature and top-p are applied per row by our processor; greedy rows take the argmax.
        nucleus = RowTemperatureNucleus(temperatures, top_p) if temperatures[0] > 0 else None
        rows = decode(model, prefill.input_ids, prefill.attention_mask, prefill.cache, max_new_tokens, eos_ids, nucleus)
        del prefill
        for ids, i in zip(rows, batch):
            n = _count_until_eos(ids, eos_ids, tokenizer.pad_token_id)
            text = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
            # No EOS among the new tokens: generation stopped at max_new_tokens, mid-answer.
            results[requests[i].key] = Decoded(text, n, truncated=n == len(ids))
        bar.update(len(batch))
    bar.close()
    return results


def left_padded(token_lists: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``token_lists`` padded on the left to the longest, as the
    tokenizer pads for decoding."""
    width = max(len(ids) for ids in token_lists)
    ids = torch.tensor([[pad_id] * (width - len(t)) + list(t) for t in token_lists], device=device)
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_lists], device=device)
    return ids, mask


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its own row of a left-padded batch, as ``model.generate`` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, max_new_tokens: int, eos_ids: list[int],
           nucleus: "RowTemperatureNucleus | None") -> list[list[int]]:
    """Each row's new tokens, up to and including its EOS (``max_new_tokens`` of them when it has
    none): sampled through ``nucleus``, or greedy when it is None. ``cache`` (from
    ``shared_prefill``) holds every prompt token but the last; None: the prompts are encoded here.

    A row that has ended leaves the batch (its KV cache rows are dropped) once an eighth of the
    batch has ended, instead of being decoded to the longest row's end as ``model.generate``
    does: a step costs about what its rows do (docs/speed.md), and answers end at very different
    lengths. Sampling draws one number a live row and step, so a seed gives the same samples
    whether or not the prefill was shared."""
    from tasks.kv_cache import reserved_cache

    positions = left_padded_positions(attention_mask)
    if cache is None:
        cache = reserved_cache(model, room=max_new_tokens)
        step_ids, step_positions = input_ids, positions
    else:
        step_ids, step_positions = input_ids[:, -1:], positions[:, -1:]
    eos = torch.tensor(eos_ids, device=input_ids.device)
    rows = torch.arange(input_ids.shape[0])  # the original row of each row still in the batch
    ended = torch.zeros(len(rows), dtype=torch.bool, device=input_ids.device)
    new_tokens: list[list[int]] = [[] for _ in range(len(rows))]
    mask, position = attention_mask, positions[:, -1]
    for step in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1, :].float()
        if nucleus is None:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = nucleus.sample(logits)
        for row, token, done in zip(rows.tolist(), tokens.tolist(), ended.tolist()):
            if not done:
                new_tokens[row].append(token)
        ended |= torch.isin(tokens, eos)
        if bool(ended.all()) or step == max_new_tokens - 1:
            break
        if int(ended.sum()) >= max(1, len(rows) // 8):
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens, mask, position, ended = rows[keep.cpu()], tokens[keep], mask[keep], position[keep], ended[keep]
            if nucleus is not None:
                nucleus.temperatures = nucleus.temperatures[keep.cpu()]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        position = position + 1
        step_ids, step_positions = tokens.unsqueeze(1), position.unsqueeze(1)
    return new_tokens


class Prefilled(NamedTuple):
    """A batch ready for ``decode``: the KV cache of every prompt token but the last (None: not
    computed yet), the rows' tokens (the last prompt token at least) and their attention mask, one
    column per cached token and per token in ``input_ids``."""
    cache: object
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def common_prefix_length(token_lists: list[list[int]]) -> int:
    """How many leading tokens every list shares."""
    shortest = min(token_lists, key=len)
    for n, token in enumerate(shortest):
        if any(ids[n] != token for ids in token_lists):
            return n
    return len(shortest)


def shared_prefill(model, prompts: list[list[int]], pad_id: int, device, room: int = 0) -> Prefilled | None:
    """The batch's prompts (token ids, a row each) prefilled with no token encoded twice, or None
    when nothing is shared.

    Two things are shared: the tokens every prompt starts with (the chat template's system
    prompt: 24 of the bench's 50-79 tokens) are encoded once, in one row; then each distinct
    prompt's remaining tokens once, in one row a prompt, attending to that prefix; the k rows
    asking a prompt get copies of its cache. The cache holds every prompt token but the last, so
    ``decode`` starts by feeding the last one, as it would after its own prefill. Each row's
    columns are the prefix, its padding, then the rest of its prompt: positions and the mask
    follow the tokens, as they do for left-padded rows, so the model computes the same thing. The
    cache keeps ``room`` tokens free for decoding (``tasks/kv_cache.py``)."""
    from tasks.kv_cache import reserved_cache

    distinct = list(dict.fromkeys(map(tuple, prompts)))
    # Every prompt keeps at least its last token out of the cache, for decode's first step.
    prefix = min(common_prefix_length(distinct), min(len(ids) for ids in distinct) - 1)
    if len(distinct) == len(prompts) and prefix < 2:
        return None
    cache = reserved_cache(model, room)
    if prefix:
        model(input_ids=torch.tensor([distinct[0][:prefix]], device=device), cache=cache, use_cache=True,
              position_ids=torch.arange(prefix, device=device).unsqueeze(0), logits_to_keep=1)
        cache.batch_select_indices(torch.zeros(len(distinct), dtype=torch.long, device=device))
    rest_ids, rest_mask = left_padded([ids[prefix:-1] for ids in distinct], pad_id, device)
    mask = torch.cat([rest_mask.new_ones((len(distinct), prefix)), rest_mask], dim=1)
    if rest_ids.shape[1]:
        positions = left_padded_positions(mask)[:, prefix:]
        model(input_ids=rest_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    row_of = {ids: row for row, ids in enumerate(distinct)}
    rows = torch.tensor([row_of[tuple(ids)] for ids in prompts], device=device)
    cache.batch_select_indices(rows)
    last = torch.tensor([[ids[-1]] for ids in distinct], device=device)[rows]
    return Prefilled(cache, last, torch.cat([mask[rows], mask.new_ones((len(prompts), 1))], dim=1))


def _eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _count_until_eos(ids: list[int], eos_ids: list[int], pad_id: int | None) -> int:
    for n, token in enumerate(ids):
        if token in eos_ids or token == pad_id:
            return n
    return len(ids)


def generate_candidates(backend, prompts: list[Prompt], config: GenerateConfig, seed: int, progress: bool = True) -> list[Candidate]:
    """k candidates per prompt from ``backend`` (a tasks.backends.SamplingBackend), candidate i
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
