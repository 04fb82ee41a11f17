"""One row per preference pair: the prompt goes through the model once for both answers.

TRL's DPO collator makes two rows of each pair, prompt + chosen and prompt + rejected, so every
prompt is computed twice (with the chat template the demo's prompts are about 62 tokens, its
answers up to 80). Here a pair's two rows become one:

    prompt | chosen answer | the prompt's last token again | rejected answer

with position ids that start the repeated token and the rejected answer where the prompt ends,
and a 4D attention mask under which the second half sees the prompt (the repeated token standing
in for the prompt's last) but not the chosen answer. Every answer token then sees what it saw in
its own row, so the log-probs are the same (up to the order of floating-point sums). The prompt's
last token is repeated because its hidden state predicts the first token of both answers, and a
position carries one label.

The model's per-token outputs are put back in the two-row layout TRL's loss reads, so the loss,
its metrics and its gradients are computed by TRL as before. Batches this cannot pack (a prompt
that differs between a pair's rows, answers cut away by ``max_length``, an attention kernel that
takes no 4D mask) go through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Attention implementations that take a custom 4D mask as it is (flash attention reads only padding):
# SDPA a boolean one, eager attention one added to the scores.
BOOLEAN_MASK_ATTENTION = {"sdpa"}
ADDITIVE_MASK_ATTENTION = {"eager"}
IGNORE = -100


@dataclass(frozen=True)
class PackedPairs:
    input_ids: torch.Tensor  # (pairs, n)
    position_ids: torch.Tensor  # (pairs, n)
    attention_mask: torch.Tensor  # (pairs, 1, n, n), True where a query may attend to a key
    labels: torch.Tensor  # (pairs, n): the answers' tokens, IGNORE elsewhere
    source: torch.Tensor  # (2 x pairs, length - 1): where each two-row output position is in the packed outputs, flattened
    valid: torch.Tensor  # (2 x pairs, length - 1): positions that have one (the answers' labels)
    lengths: tuple[int, ...]  # each packed row's tokens, padding excluded


def _answer_span(labels: torch.Tensor, length: int) -> tuple[int, int] | None:
    """(start, end) of a row's labelled positions when they are one run ending at the row's end."""
    where = (labels[:length] != IGNORE).nonzero().flatten()
    if len(where) == 0 or int(where[-1]) != length - 1 or len(where) != length - int(where[0]):
        return None
    return int(where[0]), length


def pack_pairs(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> PackedPairs | None:
    """The packed rows of TRL's paired batch (rows ``[chosen_1..chosen_k, rejected_1..rejected_k]``,
    right-padded), or None when a pair cannot be packed."""
    rows, length = input_ids.shape
    if rows % 2 or rows == 0 or length < 2:
        return None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.dim() != 2:
        return None
    spans = _pair_spans(input_ids, labels, attention_mask)
    if spans is None:
        return None
    return _packed(input_ids, labels, spans)


def _pair_spans(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """Each pair's (prompt length, chosen row length, rejected row length), or None when a pair
    cannot be packed: a row not right-padded, answers that are not one run to the row's end or start
    at different places, no prompt, or a prompt that differs between the two rows."""
    pairs = input_ids.shape[0] // 2
    row_lengths = attention_mask.sum(dim=1).tolist()
    spans = []
    for i in range(pairs):
        chosen_len, rejected_len = int(row_lengths[i]), int(row_lengths[pairs + i])
        if not attention_mask[i, :chosen_len].all() or not attention_mask[pairs + i, :rejected_len].all():
            return None  # not right-padded
        chosen, rejected = _answer_span(labels[i], chosen_len), _answer_span(labels[pairs + i], rejected_len)
        if chosen is None or rejected is None or chosen[0] != rejected[0] or chosen[0] < 1:
            return None
        prompt = chosen[0]
        if not torch.equal(input_ids[i, :prompt], input_ids[pairs + i, :prompt]):
            return None
        spans.append((prompt, chosen_len, rejected_len))
    return spans


def _packed(input_ids: torch.Tensor, labels: torch.Tensor, spans: list[tuple[int, int, int]]) -> PackedPairs:
    """The packed rows of pairs already checked by ``_pair_spans``, right-padded to the longest."""
    rows, length = input_ids.shape
    pairs = rows // 2
    width = max(c + 1 + r - p for p, c, r in spans)
    device = input_ids.device
    packed_ids = input_ids.new_zeros(pairs, width)
    positions = torch.zeros(pairs, width, dtype=torch.long, device=device)
    packed_labels = torch.full((pairs, width), IGNORE, dtype=labels.dtype, device=device)
    allowed = torch.zeros(pairs, width, width, dtype=torch.bool, device=device)
    source = torch.zeros(rows, length - 1, dtype=torch.long, device=device)
    valid = torch.zeros(rows, length - 1, dtype=torch.bool, device=device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    for i, span in enumerate(spans):
        _fill_packed_row(i, span, input_ids, labels, packed_ids, positions, packed_labels)
        _fill_pair_attention(allowed[i], causal, span)
        _fill_output_sources(i, span, width, source, valid)
    return PackedPairs(packed_ids, positions, allowed.unsqueeze(1), packed_labels, source, valid,
                       tuple(c + 1 + r - p for p, c, r in spans))


def _fill_packed_row(i: int, span: tuple[int, int, int], input_ids: torch.Tensor, labels: torch.Tensor,
                     packed_ids: torch.Tensor, positions: torch.Tensor, packed_labels: torch.Tensor) -> None:
    """Writes pair ``i``'s tokens, position ids and labels into row ``i`` of the packed tensors."""
    prompt, chosen_len, rejected_len = span
    pairs = input_ids.shape[0] // 2
    device = input_ids.device
    n = chosen_len + 1 + rejected_len - prompt
    second = chosen_len  # where the repeated prompt token, then the rejected answer, begin
    packed_ids[i, :chosen_len] = input_ids[i, :chosen_len]
    packed_ids[i, second] = input_ids[i, prompt - 1]
    packed_ids[i, second + 1:n] = input_ids[pairs + i, prompt:rejected_len]
    positions[i, :chosen_len] = torch.arange(chosen_len, device=device)
    positions[i, second] = prompt - 1
    positions[i, second + 1:n] = torch.arange(prompt, rejected_len, device=device)
    packed_labels[i, :chosen_len] = labels[i, :chosen_len]
    packed_labels[i, second + 1:n] = labels[pairs + i, prompt:rejected_len]


def _fill_pair_attention(allowed: torch.Tensor, causal: torch.Tensor, span: tuple[int, int, int]) -> None:
    """Writes one packed row's (width, width) mask into ``allowed``: causal within the row, except
    that the rejected half cannot see the chosen half."""
    prompt, chosen_len, rejected_len = span
    width = allowed.shape[-1]
    n = chosen_len + 1 + rejected_len - prompt
    second = chosen_len
    allowed[:n, :n] = causal[:n, :n]
    # The second half sees neither the chosen answer nor the prompt's last token, whose copy stands in for it.
    allowed[second:n, prompt - 1:second] = False
    pad = torch.arange(n, width, device=allowed.device)
    allowed[pad, pad] = True  # padding attends to itself: no query without a key


def _fill_output_sources(i: int, span: tuple[int, int, int], width: int, source: torch.Tensor, valid: torch.Tensor) -> None:
    """Writes where pair ``i``'s two rows of outputs are found in the flattened packed outputs."""
    prompt, chosen_len, rejected_len = span
    pairs = source.shape[0] // 2
    device = source.device
    # Output position t scores label t + 1: the chosen row's positions are the packed row's own,
    # the rejected row's are shifted past the chosen answer and the repeated token.
    offset = i * (width - 1)
    chosen_out = torch.arange(prompt - 1, chosen_len - 1, device=device)
    source[i, chosen_out] = offset + chosen_out
    valid[i, chosen_out] = True
    rejected_out = torch.arange(prompt - 1, rejected_len - 1, device=device)
    source[pairs + i, rejected_out] = offset + rejected_out + (chosen_len + 1 - prompt)
    valid[pairs + i, rejected_out] = True


def unpack(packed_output: torch.Tensor, packed: PackedPairs) -> torch.Tensor:
    """A per-token output of the packed rows, ``(pairs, n - 1)``, in the two-row layout (zero
    where the two-row batch has no label, as the fused LM head leaves it)."""
    flat = packed_output.reshape(-1)[packed.source]
    return flat.masked_fill(~packed.valid, 0)


def attention_mask_for(model, allowed: torch.Tensor) -> torch.Tensor | None:
    """``allowed`` in the form ``model``'s attention takes: None for one that takes no custom mask."""
    inner = _unwrapped(model)
    kind = getattr(getattr(inner, "config", None), "_attn_implementation", None) or "eager"
    if kind in BOOLEAN_MASK_ATTENTION:
        return allowed
    if kind in ADDITIVE_MASK_ATTENTION:
        dtype = next((p.dtype for p in inner.parameters() if p.is_floating_point()), torch.float32)
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return None


class SharedPromptForward:
    """Calls ``model`` (TRL's fused-LM-head forward) on a paired batch with each pair packed in one
    row, and hands back its per-token outputs in the two-row layout; anything else goes through."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        packed = None
        if kwargs.get("fused_lm_head") and labels is not None and input_ids is not None and "position_ids" not in kwargs:
            packed = pack_pairs(input_ids, labels, attention_mask)
        mask = packed and attention_mask_for(self.model, packed.attention_mask)
        if packed is None or mask is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        outputs = self.model(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                             labels=packed.labels, **kwargs)
        per_token = packed.labels.shape[0], packed.labels.shape[1] - 1
        return type(outputs)(**{name: unpack(value, packed) if torch.is_tensor(value) and tuple(value.shape) == per_token else value
                                for name, value in outputs.items()})


def _unwrapped(model):
    """The module under DDP's and PEFT's wrappers (its config names the attention kernel)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packed_length(prompt: int, chosen: int, rejected: int, max_length: int | None = None) -> int:
    """Tokens in a pair's packed row (each of its two sequences cut at ``max_length`` first, as TRL does)."""
    if max_length:
        chosen, rejected = min(chosen, max(max_length - prompt, 0)), min(rejected, max(max_length - prompt, 0))
        prompt = min(prompt, max_length)
    return prompt + chosen + 1 + rejected
