"""Generation backend 'vllm': a clear error where vllm is missing (here), and real sampling on a
CUDA machine with vllm installed (the GPU worker's image, docker/Dockerfile.cuda)."""

from __future__ import annotations

import importlib.util

import pytest

from infra.records import Prompt
from infra.settings import GenerateConfig, ModelConfig
from tasks.generate import generate_candidates
from tasks.sampling.backends import open_backend


def _has_cuda_and_vllm() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_named_with_the_way_out(tiny_model):
    from tasks.sampling.vllm_backend import VLLMMissingError

    with pytest.raises(VLLMMissingError, match="docker/Dockerfile.cuda"):
        open_backend(tiny_model, GenerateConfig(backend="vllm"), ModelConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_and_vllm(), reason="needs CUDA and vllm")
def test_vllm_samples_k_candidates_per_prompt_at_their_temperatures(tmp_path):
    from infra.models import resolve_checkpoint
    from infra.settings import BUNDLED_MODEL

    checkpoint = resolve_checkpoint(BUNDLED_MODEL, tmp_path)  # vLLM's kernels need real head sizes, not the tiny model's
    prompts = [Prompt(id=f"p{i}", text=f"Write one sentence about the number {i}.") for i in range(8)]
    config = GenerateConfig(backend="vllm", n_candidates=4, temperatures=[0.6, 1.0], max_new_tokens=32,
                            vllm={"gpu_memory_utilization": 0.3})
    with open_backend(checkpoint, config, ModelConfig()) as backend:
        candidates = generate_candidates(backend, prompts, config, seed=1, progress=False)
        again = generate_candidates(backend, prompts, config, seed=1, progress=False)
    assert len(candidates) == 32
    assert {(c.prompt_id, c.index) for c in candidates} == {(p.id, i) for p in prompts for i in range(4)}
    assert [c.temperature for c in candidates if c.prompt_id == "p0"] == [0.6, 1.0, 0.6, 1.0]
    assert all(0 <= c.n_tokens <= 32 and (c.n_tokens == 32 or not c.truncated) for c in candidates)
    assert sum(bool(c.text) for c in candidates) >= 28
    assert candidates == again  # seeded per request
