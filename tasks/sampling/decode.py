"""The ``hf`` backend's sampler: batched decoding with the model's forward passes.

``sample_batched`` renders the prompts with the chat template, groups them into batches of
similar length, prefills each batch (``prefill.py``, a prompt's k rows sharing one prefill) and
decodes it with ``decode``: a loop of forward passes in which a row that has ended leaves the batch
rather than being decoded to the longest row's end (``model.generate`` cannot drop rows), its KV
cache written in place (``kv_cache.py``), each row sampled at its own temperature (``nucleus.py``).
A row ends at any of the model's or the tokenizer's EOS tokens (``eos_token_ids``).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from tqdm.auto import tqdm

from tasks.sampling.kv_cache import reserved_cache
from tasks.sampling.nucleus import RowTemperatureNucleus
from tasks.sampling.prefill import Prefilled, left_padded, left_padded_positions, shared_prefill
from tasks.sampling.requests import Decoded, SampleRequest, length_grouped_batches, render_chat


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
    part: Collection[int] | None = None,
) -> dict[tuple, Decoded]:
    """Decode every request; returns key -> Decoded (text, new tokens, cut at the budget). Temperature 0 is greedy.

    With ``share_prefill`` the rows of a batch that ask the same prompt (the k candidates of a
    prompt) share one prefill: the batch's distinct prompts are encoded once and their KV cache is
    copied to every row that asks them, instead of each row encoding its prompt again. The rows,
    their order and their random numbers are the same either way, so are the samples, up to
    rounding: the prefill groups its arithmetic differently, and where a distribution is flat a
    last-bit difference can move a draw across a token boundary.

    ``part``: decode only the batches of these numbers (``batch_plan``'s order), as the ``ray``
    backend's actors do; each batch has its own seed, so a batch's samples do not depend on which
    process decodes it."""
    encoded = encode_requests(tokenizer, requests)
    batches = batch_plan(encoded, requests, batch_size)
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    results: dict[tuple, Decoded] = {}
    chosen = range(len(batches)) if part is None else sorted(set(part))
    bar = tqdm(total=sum(len(batches[b]) for b in chosen), desc=progress, unit="seq", disable=progress is None)
    for batch_no in chosen:
        batch = batches[batch_no]
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
            n = count_until_eos(ids, eos_ids, tokenizer.pad_token_id)
            text = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
            # No EOS among the new tokens: generation stopped at max_new_tokens, mid-answer.
            results[requests[i].key] = Decoded(text, n, truncated=n == len(ids))
        bar.update(len(batch))
    bar.close()
    return results


def encode_requests(tokenizer, requests: list[SampleRequest]) -> list[list[int]]:
    """Each request's prompt in the chat template, as token ids."""
    return tokenizer([render_chat(tokenizer, r.prompt) for r in requests], add_special_tokens=False)["input_ids"]


def batch_plan(encoded: list[list[int]], requests: list[SampleRequest], batch_size: int) -> list[list[int]]:
    """The batches ``sample_batched`` decodes (request indices), numbered by position."""
    return list(length_grouped_batches(requests, [len(ids) for ids in encoded], batch_size))


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


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the model's generation config's EOS ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def count_until_eos(ids: list[int], eos_ids: list[int], pad_id: int | None) -> int:
    """How many of a row's new tokens come before its first EOS or padding (all of them when none)."""
    for n, token in enumerate(ids):
        if token in eos_ids or token == pad_id:
            return n
    return len(ids)


