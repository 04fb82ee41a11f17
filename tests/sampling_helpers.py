"""Test helpers for the sampling machinery (tasks/sampling/)."""

from __future__ import annotations

from infra.settings import GenerateConfig, ModelConfig
from tasks.sampling.backends import HFBackend, SamplingBackend


def hf_backend_from_loaded(model, tokenizer, config: GenerateConfig | None = None) -> HFBackend:
    """An ``hf`` backend over a model already in memory, so a test loads its model once for many backends."""
    backend = HFBackend.__new__(HFBackend)
    SamplingBackend.__init__(backend, getattr(model, "name_or_path", ""), config or GenerateConfig(), ModelConfig())
    backend.model, backend.tokenizer = model, tokenizer
    return backend
