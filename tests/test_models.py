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
