"""A tiny randomly initialised Llama with the real SmolLM2 tokenizer, for tests (the ``tiny_model`` fixture)."""

from __future__ import annotations

from pathlib import Path

import torch

from infra.models import bundled_gguf, save_whole


def make_tiny_model(target: Path, tokenizer_source: str | None = None, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama with the real SmolLM2 tokenizer at ``target`` (once)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (target / "config.json").exists():
        return target
    if tokenizer_source is None:
        gguf = bundled_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return save_whole(LlamaForCausalLM(config), tokenizer, target)
