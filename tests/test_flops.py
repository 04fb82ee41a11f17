"""Achieved FLOP/s and MFU of training (tasks/training/flops.py): the counts on known inputs, the peak
measured for real, and a real training run reporting both."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from tasks.training.flops import matmul_params, measured_peak_flops, trained_tokens, utilisation


def test_tokens_count_prompt_and_answer_cut_at_max_length():
    apart = Dataset.from_dict({"prompt_ids": [[1, 2, 3], [1] * 10], "chosen_ids": [[4, 5], [4] * 10], "rejected_ids": [[6], [6] * 3]})
    # (3+2) + min(12, 10+10) + (3+1) + min(12, 10+3)
    assert trained_tokens(apart, max_length=12) == 5 + 12 + 4 + 12
    whole = Dataset.from_dict({"prompt_input_ids": [[1, 2]], "chosen_input_ids": [[1, 2, 4, 5]], "rejected_input_ids": [[1, 2, 6]]})
    assert trained_tokens(whole, max_length=12) == 4 + 3
    # One packed row a pair (train.share_prompt): the prompt once, its last token again, both answers (each cut as TRL cuts it).
    assert trained_tokens(apart, max_length=12, share_prompt=True) == (3 + 2 + 1 + 1) + (10 + 2 + 1 + 2)


def test_utilisation_is_four_flops_per_parameter_and_token():
    achieved, mfu = utilisation(n_params=1_000, tokens=500, seconds=2.0, peak=4e6)
    assert achieved == 4 * 1_000 * 500 / 2.0 and mfu == pytest.approx(0.25)


def test_tied_embeddings_count_once_untied_input_embeddings_not_at_all():
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    tied = LlamaForCausalLM(LlamaConfig(**settings, tie_word_embeddings=True))
    untied = LlamaForCausalLM(LlamaConfig(**settings, tie_word_embeddings=False))
    assert matmul_params(tied) == sum(p.numel() for p in tied.parameters())
    assert matmul_params(untied) == sum(p.numel() for p in untied.parameters()) - 100 * 16


def test_the_peak_is_measured():
    peak = measured_peak_flops("cpu", torch.float32, size=256, seconds=0.2)
    assert math.isfinite(peak) and peak > 1e8  # any CPU of this century
