"""The prefill of a batch: its prompts' tokens encoded into a KV cache before decoding starts.

Prompts are left-padded to a common width (``left_padded``), as the tokenizer pads for decoding.
``shared_prefill`` encodes no token twice: the opening every prompt of a batch shares (the chat
template's system prompt) once for the batch, and each distinct prompt once for the k rows that
ask it, whose caches are copies of it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tasks.sampling.kv_cache import reserved_cache


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
    cache keeps ``room`` tokens free for decoding (``kv_cache.py``)."""
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

