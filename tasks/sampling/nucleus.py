"""Per-row temperature and nucleus (top-p) sampling, exact, from a top-k shortlist.

One batch of the ``hf`` backend mixes temperatures (a prompt's k candidates each have their own),
so ``RowTemperatureNucleus`` divides each row by its own temperature, keeps the smallest set of
tokens whose probability reaches ``top_p``, found among a top-k shortlist rather than by a
full-vocabulary sort (which dominates a CPU decoding step otherwise: 120 ms of 280 ms for 64 rows
of 49k), and draws each row's token with one uniform number.
"""

from __future__ import annotations

import torch

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

