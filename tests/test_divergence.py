"""The KL estimate of the beta sweep (tasks/divergence.py) on the tiny model: a batch scores each
answer as it scores alone, a policy's KL to itself is 0, and a moved policy's is positive."""

from __future__ import annotations

import math

import pytest
import torch

from infra.models import load_model, load_tokenizer
from infra.records import Prompt
from infra.settings import EvalConfig, GenerateConfig, ModelConfig
from tasks.divergence import answer_logprobs, sampled_kl

FP32 = ModelConfig(dtype="fp32")
PROMPTS = ["Name a colour.", "Describe your street in a sentence of about twenty words, please.", "Count to three."]
ANSWERS = ["Blue.", "It is quiet, with old trees and a bakery on the corner.", "One, two, three, and that is all of them."]


def _alone(model, tokenizer, prompt: str, answer: str) -> float:
    from tasks.sampling.requests import render_chat

    context = tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    ids = context + tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logps[t - 1, ids[t]].item() for t in range(len(context), len(ids)))


def test_a_batch_scores_each_answer_as_alone(tiny_model):
    model, tokenizer = load_model(tiny_model, FP32), load_tokenizer(tiny_model)
    batched = answer_logprobs(model, tokenizer, PROMPTS, ANSWERS, batch_size=3)
    assert batched == pytest.approx([_alone(model, tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS)], abs=1e-3)
    assert all(v < 0 for v in batched)


def test_kl_to_itself_is_zero_and_to_a_moved_policy_positive(tiny_model, tmp_path):
    # Sixteen answers of up to 24 tokens: the estimate's noise is well under the moved policy's KL.
    prompts = [Prompt(id=f"{i}-{j}", text=f"{t} ({j})") for i, t in enumerate(PROMPTS) for j in range(6)][:16]
    settings = dict(generate=GenerateConfig(), model_config=FP32, evaluate=EvalConfig(max_new_tokens=24, batch_size=4))
    assert sampled_kl(tiny_model, tiny_model, prompts, **settings) == pytest.approx(0.0, abs=1e-4)
    moved = load_model(tiny_model, FP32)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(0.3 * torch.randn_like(param))
    moved.save_pretrained(tmp_path / "moved")
    load_tokenizer(tiny_model).save_pretrained(tmp_path / "moved")
    kl = sampled_kl(str(tmp_path / "moved"), tiny_model, prompts, **settings)
    assert math.isfinite(kl) and kl > 0, kl
