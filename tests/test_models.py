"""Loading a policy: an fp32 checkpoint loaded in bf16 is the model transformers would load."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from infra.models import _saved_in_fp32, load_causal_lm


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_an_fp32_checkpoint_loads_as_transformers_loads_it(tiny_model, dtype):
    assert _saved_in_fp32(tiny_model)
    ours = load_causal_lm(tiny_model, dtype)
    theirs = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    assert _same(dict(ours.named_parameters()), dict(theirs.named_parameters()))
    assert _same(dict(ours.named_buffers()), dict(theirs.named_buffers()))  # the rotary frequencies stay fp32
    assert ours.lm_head.weight is ours.model.embed_tokens.weight  # still tied
    assert ours.config.dtype == theirs.config.dtype == dtype
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_a_checkpoint_not_in_fp32_is_left_to_transformers(tiny_model, tmp_path):
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert not _saved_in_fp32(str(tmp_path / "bf16"))
    assert not _saved_in_fp32(str(tmp_path / "missing"))
    model = load_causal_lm(str(tmp_path / "bf16"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


_SHAPES = """
import sys, torch
from infra.memory import release_memory, rss_mb
from infra.models import bound_kernel_caches
bound_kernel_caches()
layer = torch.nn.Linear(576, 1536).to(torch.bfloat16)
before = rss_mb()
for rows in range(50, 350):  # as many shapes as a round's sequence lengths make
    layer(torch.randn(rows, 576, dtype=torch.bfloat16, requires_grad=True)).sum().backward()
release_memory()
print(rss_mb() - before)
"""


@pytest.mark.skipif(not __import__("infra.models", fromlist=["cpu_supports_bf16"]).cpu_supports_bf16(),
                    reason="bf16 products go through oneDNN only on a CPU with native bf16")
def test_bf16_kernel_caches_are_capped_unless_the_environment_says_otherwise():
    """300 shapes of bf16 products: with the caps, what stays resident after them is far less than
    with oneDNN's and ideep's own capacity (1024), which a user can still choose."""
    import os
    import subprocess
    import sys

    def kept_mb(**env) -> float:
        clean = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
        out = subprocess.run([sys.executable, "-c", _SHAPES], env={**clean, **env}, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    capped = kept_mb()
    uncapped = kept_mb(ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024", LRU_CACHE_CAPACITY="1024")
    assert uncapped > capped + 150, (capped, uncapped)
