"""Speed of Flywheel's generate and train stages against the guide's recipes, side by side.

Same model (the bundled SmolLM2-135M-Instruct unless --model), same prompts, same
token budget, one process, one run:

* generation: the hf backend, ``tasks.sampling.decode.sample_batched`` (chat template,
  length-grouped batches, the k samples of a prompt sharing one prefill, bf16 where
  the CPU/GPU supports it unless --dtype), and the same without the shared prefill,
  against the guide's recipe: one ``model.generate`` call per prompt and candidate
  on the model as loaded (fp32). All count only the new tokens they produced, up to EOS.
* training: ``tasks.train.train_policy`` (TRL DPOTrainer + LoRA, batched, bf16
  autocast, no activation checkpointing) against ``DPOTrainer`` with the guide's
  settings (batch 1, fp32 on CPU, TRL's defaults otherwise), on the same pairs.

Usage:  .venv/bin/python benchmarks/bench_speed.py [--prompts 32] [--tokens 64] [--pairs 32]
        .venv/bin/python benchmarks/bench_speed.py --generation-only --dtype fp32   (generation alone, fp32)
Writes benchmarks/results/speed-<machine kind>-<dtype>-<date>[-<label>].json (benchmarks/result_meta.py) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` importable whether run as a file or with -m


def guide_generate(model, tokenizer, rendered: list[str], temperatures: list[float], max_new_tokens: int, eos_ids) -> int:
    """The guide's loop: one prompt, one sample, one generate call at a time; returns new tokens."""
    from tasks.sampling.decode import count_until_eos

    n_tokens = 0
    for i, text in enumerate(rendered):
        for j, temperature in enumerate(temperatures):
            torch.manual_seed(1000 + i * len(temperatures) + j)
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, temperature=temperature, do_sample=True,
                    top_p=0.95, top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids,
                )
            n_tokens += count_until_eos(out[0, inputs["input_ids"].shape[1]:].tolist(), eos_ids, tokenizer.pad_token_id)
    return n_tokens


def bench_generation(checkpoint: str, prompts, temperatures, max_new_tokens: int, batch_size: int, dtype: str = "auto") -> dict:
    """The hf backend (shared prefill, then without it) and the guide's loop on the same prompts, side by side."""
    from infra.memory import peak_rss
    from infra.models import load_model, load_tokenizer
    from infra.settings import ModelConfig
    from tasks.sampling.decode import eos_token_ids, sample_batched
    from tasks.sampling.requests import SampleRequest, render_chat

    tokenizer = load_tokenizer(checkpoint)
    # Warm-up on both models, so one-off costs (kernel selection, allocations) count for neither.
    fast = load_model(checkpoint, ModelConfig(dtype=dtype))
    requests = [SampleRequest(key=(p.id, j), prompt=p.text, temperature=t) for p in prompts for j, t in enumerate(temperatures)]
    # At the measured batch shape, both ways: on a GPU the first pass at a new shape pays for kernel selection
    # (an H200 ran the first of the two variants 3x slower than the second when warmed on 2 rows only).
    for share in (True, False):
        sample_batched(fast, tokenizer, requests, max_new_tokens=4, batch_size=batch_size, seed=1, share_prefill=share)
    runs = {}
    for name, share in (("shared_prefill", True), ("no_sharing", False)):
        with peak_rss() as memory:
            started = time.perf_counter()
            decoded = sample_batched(fast, tokenizer, requests, max_new_tokens, batch_size, seed=0, top_p=0.95,
                                     progress=f"flywheel generate ({name})", share_prefill=share)
            seconds = time.perf_counter() - started
        tokens = sum(d.n_tokens for d in decoded.values())
        runs[name] = {"tokens": tokens, "s": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": memory.peak_mb}
    del fast

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(checkpoint)  # as the guide loads it: fp32, on the GPU if there is one
    plain.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    rendered = [render_chat(tokenizer, p.text) for p in prompts]
    eos_ids = eos_token_ids(plain, tokenizer)
    guide_generate(plain, tokenizer, rendered[:1], temperatures[:1], 4, eos_ids)
    started = time.perf_counter()
    guide_tokens = guide_generate(plain, tokenizer, rendered, temperatures, max_new_tokens, eos_ids)
    guide_s = time.perf_counter() - started
    ours, unshared, guide_rate = runs["shared_prefill"], runs["no_sharing"], guide_tokens / guide_s
    return {
        "sequences": len(requests), "samples_per_prompt": len(temperatures), "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "dtype": dtype,
        "flywheel_tokens": ours["tokens"], "flywheel_s": ours["s"], "flywheel_tokens_per_s": ours["tokens_per_s"],
        "flywheel_peak_rss_mb": ours["peak_rss_mb"],
        "no_sharing_tokens": unshared["tokens"], "no_sharing_s": unshared["s"], "no_sharing_tokens_per_s": unshared["tokens_per_s"],
        "guide_tokens": guide_tokens, "guide_s": guide_s, "guide_tokens_per_s": guide_rate,
        "speedup": ours["tokens_per_s"] / guide_rate, "no_sharing_speedup": unshared["tokens_per_s"] / guide_rate,
        "shared_prefill_gain": ours["tokens_per_s"] / unshared["tokens_per_s"],
    }


def guide_train(checkpoint: str, pairs, output_dir: str, callbacks=()) -> float:
    """TRL DPOTrainer as the guide configures it (batch 1; bf16 only on CUDA); returns seconds."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}], "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    args = DPOConfig(
        output_dir=output_dir, max_length=256, per_device_train_batch_size=1, num_train_epochs=1,
        logging_steps=1, report_to="none", save_strategy="no", beta=0.1, loss_type=["sigmoid"],
        dataloader_num_workers=0, learning_rate=5e-5, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), fp16=False,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM", target_modules="all-linear")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora,
                         callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def bench_training(checkpoint: str, pairs, batch_size: int, dtype: str = "auto") -> dict:
    from infra.settings import ModelConfig, TrainConfig
    from tasks.train import TrainJob, train_policy

    with tempfile.TemporaryDirectory() as tmp:
        # No held-out split: both sides train on the same pairs, and nothing else is timed.
        config = TrainConfig(epochs=1, batch_size=batch_size, beta=[0.1], learning_rate=[5e-5], lora_r=8, lora_alpha=16, max_length=256,
                             heldout_share=0, nll_weight=0.0, replay_share=0.0)  # plain DPO, as the baseline
        ours = train_policy(TrainJob(checkpoint=checkpoint, pairs=pairs, config=config, model=ModelConfig(dtype=dtype), round_index=1,
                                     output_dir=Path(tmp) / "ours"))
        guide_s = guide_train(checkpoint, pairs, str(Path(tmp) / "guide"))
    guide_rate = len(pairs) / guide_s
    return {
        "pairs": len(pairs), "flywheel_batch_size": batch_size,
        "flywheel_s": ours.runtime_s, "flywheel_pairs_per_s": ours.pairs_per_s,
        "guide_s": guide_s, "guide_pairs_per_s": guide_rate, "speedup": ours.pairs_per_s / guide_rate,
        "flywheel_achieved_tflops": ours.achieved_tflops, "flywheel_mfu": ours.mfu,
    }


def make_pairs(checkpoint: str, prompts, max_new_tokens: int):
    """Real preference pairs from the model itself: two samples a prompt, the longer one 'chosen'."""
    from infra.models import load_model, load_tokenizer
    from infra.records import PreferencePair
    from infra.settings import ModelConfig
    from tasks.sampling.decode import sample_batched
    from tasks.sampling.requests import SampleRequest

    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint, ModelConfig())
    requests = [SampleRequest(key=(p.id, j), prompt=p.text, temperature=t) for p in prompts for j, t in enumerate((0.7, 1.0))]
    decoded = sample_batched(model, tokenizer, requests, max_new_tokens, batch_size=64, seed=7, top_p=0.95)
    pairs = []
    for p in prompts:
        a, b = decoded[(p.id, 0)][0], decoded[(p.id, 1)][0]
        chosen, rejected = (a, b) if len(a) >= len(b) else (b, a)
        pairs.append(PreferencePair(prompt_id=p.id, prompt=p.text, chosen=chosen, rejected=rejected,
                                    score_chosen=1.0, score_rejected=0.0, similarity=0.0))
    return pairs


def main() -> None:
    from benchmarks.result_meta import build_meta, effective_dtype, write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="checkpoint (default: the bundled model)")
    parser.add_argument("--data-dir", type=Path, default=Path(".flywheel"))
    parser.add_argument("--prompts", type=int, default=16, help="prompts for generation (x --samples)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (temperatures 0.5/0.7/0.9/1.0, cycled)")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per sequence")
    parser.add_argument("--pairs", type=int, default=32, help="preference pairs for training")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--gen-batch", type=int, default=64, help="sequences decoded together (generate.batch_size)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="Flywheel's dtype, generation and training (auto: bf16 where the CPU has it); the guide stays fp32")
    parser.add_argument("--generation-only", action="store_true", help="skip the training comparison")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument("--label", help="a word or two that ends the results file's name, e.g. 'run2'")
    args = parser.parse_args()

    from infra.models import resolve_checkpoint
    from tasks.prompts import builtin_prompts

    checkpoint = resolve_checkpoint(args.model, args.data_dir)
    train = [p for p in builtin_prompts(0, 0.25) if p.split == "train"]
    temperatures = [(0.5, 0.7, 0.9, 1.0)[i % 4] for i in range(args.samples)]
    generation = bench_generation(checkpoint, train[: args.prompts], temperatures, args.tokens, args.gen_batch, args.dtype)
    training = None
    if not args.generation_only:
        pairs = make_pairs(checkpoint, train[args.prompts : args.prompts + args.pairs], args.tokens)
        training = bench_training(checkpoint, pairs, args.train_batch, args.dtype)
    meta = build_meta(__file__, effective_dtype(args.dtype), label=args.label)
    path = write_result(meta, {"model": args.model, "requested_dtype": args.dtype, "threads": torch.get_num_threads(),
                               "generation": generation, "training": training}, args.out)
    g, t = generation, training
    print(f"\nmachine: {meta['machine']}")
    print(f"generation  flywheel {g['flywheel_tokens_per_s']:8.1f} tok/s   guide loop {g['guide_tokens_per_s']:7.1f} tok/s   ratio {g['speedup']:5.1f}x"
          f"   (without shared prefill {g['no_sharing_tokens_per_s']:.1f} tok/s, {g['no_sharing_speedup']:.1f}x;"
          f" sharing gains {g['shared_prefill_gain']:.2f}x; peak RSS {g['flywheel_peak_rss_mb']:.0f} MB)")
    if t is not None:
        print(f"training    flywheel {t['flywheel_pairs_per_s']:8.2f} pairs/s guide DPO  {t['guide_pairs_per_s']:7.2f} pairs/s ratio {t['speedup']:5.1f}x"
              f"   ({t['flywheel_achieved_tflops'] * 1e3:.0f} GFLOP/s useful, MFU {t['flywheel_mfu']:.1%} of the measured matmul peak)")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
