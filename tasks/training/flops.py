"""How much of the machine training uses: achieved FLOP/s and its share of the measured peak (MFU).

Useful work per trained token is counted the usual way: a forward pass costs 2 FLOPs per
parameter used in a matrix product, the backward pass 2 more for the activations' gradients
(the frozen weights get none; LoRA's own are negligible), so 4 N per token; recomputed
activations and padding are not useful work and are not counted. The peak is measured, not
looked up: large matrix products in the training dtype on the training device, timed for
about a second, once per process.
"""

from __future__ import annotations

import functools
import time

import torch

from tasks.training.batching import pair_lengths

FLOPS_PER_PARAM_AND_TOKEN = 4  # forward 2 + backward (activation gradients) 2


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device: str, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of ``size`` x ``size`` matrix products on ``device`` in ``dtype`` (best of the timed repeats)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernels chosen, caches filled
    best, spent = 0.0, 0.0
    while spent < seconds:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        spent += took
        best = max(best, 2 * size**3 / took)
    return best


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix products: all of them but the input embeddings, unless
    they are tied to the output layer (then they are that layer's weights)."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embeddings.data_ptr()
    return total if tied else total - embeddings.numel()


def trained_tokens(dataset, max_length: int, share_prompt: bool = False) -> int:
    """Tokens one epoch trains on: every (prompt + answer) sequence of a TRL-tokenised dataset, cut
    at ``max_length``, pads excluded. DPOTrainer and KTOTrainer keep the prompt apart
    (``prompt_ids`` + ``chosen_ids`` / ``rejected_ids`` / ``completion_ids``); CPO and ORPO keep
    whole sequences (``chosen_input_ids`` / ``rejected_input_ids``). With ``share_prompt`` a pair
    is its packed row (tasks/training/packed_pairs.py): the prompt counted once."""
    columns = dataset.column_names or []
    if share_prompt and (packed := pair_lengths(dataset, max_length, share_prompt=True)) is not None:
        return sum(packed)
    prompts = [len(ids) for ids in dataset["prompt_ids"]] if "prompt_ids" in columns else None
    total = 0
    for name in ("chosen_ids", "rejected_ids", "completion_ids"):
        if name in columns and prompts is not None:
            total += sum(min(max_length, len(ids) + prompts[i]) for i, ids in enumerate(dataset[name]))
    for name in ("chosen_input_ids", "rejected_input_ids"):
        if name in columns:
            total += sum(min(max_length, len(ids)) for ids in dataset[name])
    return total


def utilisation(n_params: int, tokens: int, seconds: float, peak: float) -> tuple[float, float]:
    """(achieved FLOP/s, share of ``peak``) of training ``tokens`` through ``n_params`` in ``seconds``."""
    achieved = FLOPS_PER_PARAM_AND_TOKEN * n_params * tokens / seconds if seconds > 0 else float("nan")
    return achieved, achieved / peak if peak > 0 else float("nan")


def training_utilisation(trainer, max_length: int, epochs: float, share_prompt: bool, peak_device: str,
                         dtype: torch.dtype, fallback_seconds: float) -> tuple[float, float, int]:
    """(achieved FLOP/s, MFU, tokens) of a finished trainer's optimisation itself: TRL's
    train_runtime (``fallback_seconds`` when it logged none), without the set-up and reference pass before it."""
    history = trainer.state.log_history
    seconds = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), fallback_seconds)
    tokens = round(trained_tokens(trainer.train_dataset, max_length, share_prompt) * epochs)
    achieved, mfu = utilisation(matmul_params(trainer.model), tokens, seconds, measured_peak_flops(peak_device, dtype))
    return achieved, mfu, tokens
