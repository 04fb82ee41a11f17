"""Checkpoints into and out of training: the dtype the frozen base is held in, and the saved
adapter and merged (fp32) policy.

On a CPU the frozen base weights are held in the training dtype: bf16 autocast would round them to
it at every forward anyway (so the products are the same), and fp32 masters of frozen weights only
cost memory (and autocast's cached bf16 copies of them on top). The LoRA adapter stays fp32 (PEFT
upcasts it), and the merged checkpoint is made in fp32, because LoRA's small deltas would round
away in bf16. GPUs keep fp32 masters under autocast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from infra import layout

CPU_BASE_IN_TRAINING_DTYPE = True


def base_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the frozen policy (and a reference model) is loaded in for training."""
    return dtype if CPU_BASE_IN_TRAINING_DTYPE and device.type == "cpu" else torch.float32


def same_checkpoint(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def training_tokenizer(checkpoint: str):
    """The checkpoint's tokenizer, padding with its end-of-sequence token when it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_policy(trainer, tokenizer, output_dir: Path) -> bool:
    """``adapter/``, and ``merged/`` (fp32) where the trained model holds fp32 weights, written by
    the main process alone. Returns whether ``merged/`` is still to be made by ``merge_fresh``:
    under DeepSpeed ZeRO-3 (every process holds a shard of the weights: they are gathered, all
    processes taking part, and saved as the adapter) and for a base held in bf16 (the deltas
    would round away in it)."""
    deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
    # needs stage3_gather_16bit_weights_on_model_save
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if deepspeed else None
    if not trainer.accelerator.is_main_process:
        return False
    trainer.model.save_pretrained(output_dir / layout.ADAPTER, state_dict=state)
    if deepspeed or trainer.model.get_base_model().dtype != torch.float32:
        return True
    trainer.model.merge_and_unload().save_pretrained(output_dir / layout.MERGED)
    tokenizer.save_pretrained(output_dir / layout.MERGED)
    return False


def merge_fresh(checkpoint: str, tokenizer, output_dir: Path) -> None:
    """``merged/``: the saved adapter merged into a fresh fp32 copy of ``checkpoint``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    PeftModel.from_pretrained(base, output_dir / layout.ADAPTER).merge_and_unload().save_pretrained(output_dir / layout.MERGED)
    tokenizer.save_pretrained(output_dir / layout.MERGED)
