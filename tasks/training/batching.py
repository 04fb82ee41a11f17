"""Pairs of like length in one forward pass: each pair's padded length, and a sampler that orders
each optimizer step's pairs by length before they are cut into micro-batches.

Both only change which pairs are padded together, never which pairs a step trains on.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from tasks.training.packed_pairs import packed_length


def pair_lengths(dataset, max_length: int | None = None, share_prompt: bool = False) -> list[int] | None:
    """Each tokenized pair's padded length in a batch: its prompt and the longer of its two
    responses (TRL pads chosen and rejected to one length), or its packed row's with
    ``share_prompt``; None for a dataset that is not paired."""
    if dataset is None or not {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names or ()):
        return None
    triples = [(len(p), len(c), len(r)) for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    if share_prompt:
        return [packed_length(p, c, r, max_length) for p, c, r in triples]
    lengths = [p + max(c, r) for p, c, r in triples]
    return [min(n, max_length) for n in lengths] if max_length else lengths


class StepSortedSampler(Sampler[int]):
    """A seeded random order of the pairs each epoch, cut into optimizer steps of ``step_size``, each
    step's pairs longest first: the micro-batches cut from a step then hold pairs of like length,
    and a step is still a random draw. (transformers' ``BatchRebalanceSampler`` balances further
    but fills a short last step with repeated pairs.) The same on every process of a launch: the
    order depends only on the seed and the epoch."""

    def __init__(self, lengths: list[int], step_size: int, seed: int):
        self.lengths, self.step_size, self.seed, self.epoch = list(lengths), step_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        self.epoch += 1  # a trainer that never calls set_epoch still gets a new order next epoch
        for start in range(0, len(order), self.step_size):
            yield from sorted(order[start:start + self.step_size], key=lambda i: -self.lengths[i])
