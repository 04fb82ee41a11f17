"""A KV cache that decodes in place: room reserved for the tokens to come.

transformers' ``DynamicLayer`` grows by ``torch.cat``, copying a layer's whole cache at every
decoding step: 29% of a 64-row step of SmolLM2-135M on a CPU (docs/speed.md). ``StaticCache``
avoids the copy but attends over its whole length every step, which measured slower here.
``ReservedLayer`` keeps the keys and values in buffers with room for the answer, writes each
step's token in place, and hands attention views of the filled part.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` (so the cache's lengths and masks work unchanged) backed by buffers with
    ``room`` free tokens after each reallocation; ``keys``/``values`` are views of the filled part."""

    def __init__(self, room: int):
        super().__init__()
        self.room, self.length = room, 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self.key_buffer = self._grown(self.key_buffer, key_states, end + self.room)
            self.value_buffer = self._grown(self.value_buffer, value_states, end + self.room)
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._view()
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        bigger = like.new_empty((*like.shape[:2], capacity, like.shape[-1]))
        if buffer is not None:
            bigger[:, :, :self.length] = buffer[:, :, :self.length]
        return bigger

    def _view(self) -> None:
        self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length > 0:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._view()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a ReservedLayer only decodes forward (no cropping, no beam search)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a ReservedLayer only decodes forward (no cropping, no beam search)")

    def reset(self) -> None:
        super().reset()
        self.length, self.key_buffer, self.value_buffer = 0, None, None


def reserved_cache(model, room: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose full-attention layers keep ``room`` tokens free
    (sliding-window layers, which trim themselves, stay as transformers makes them)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
