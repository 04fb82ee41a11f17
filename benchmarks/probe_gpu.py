"""Where a GPU's time goes in Flywheel's generate and train stages, on one checkpoint.

* generation: ``sample_batched`` with and without the shared prefill, alternated (each
  warmed up at its batch shape first), at 64 and 256 sequences of 64 new tokens;
* training: ``train_policy`` on 256 synthetic pairs, 32 a step, with the whole batch in one
  pass and with 2-pair passes (gradient accumulation), timing each optimizer step;
* the guide's DPOTrainer (batch 1) on 64 of those pairs, timing each step.

Usage:  python -m benchmarks.probe_gpu CHECKPOINT [OUT_DIR [LABEL]]   (OUT_DIR: benchmarks/results by default)
Writes OUT_DIR/probe-gpu-<machine kind>-<dtype>-<date>[-<label>].json (benchmarks/result_meta.py) as it goes.
Made for a CUDA machine; runs on a CPU too (slowly), where the timings mean little.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from benchmarks.bench_speed import guide_train
from benchmarks.result_meta import RESULTS_DIR, build_meta, dump_result, effective_dtype, new_result_path
from infra.models import load_model, load_tokenizer
from infra.records import PreferencePair
from infra.settings import ModelConfig, TrainConfig
from tasks.prompts import builtin_prompts
from tasks.sampling.decode import sample_batched
from tasks.sampling.requests import SampleRequest
from tasks.train import TrainJob, train_policy


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generation_rate(model, tokenizer, prompts, share: bool, tokens: int) -> float:
    requests = [SampleRequest(key=(p.id, j), prompt=p.text, temperature=(0.5, 0.7, 0.9, 1.0)[j]) for p in prompts for j in range(4)]
    synchronize()
    started = time.perf_counter()
    decoded = sample_batched(model, tokenizer, requests, tokens, batch_size=len(requests), seed=0, top_p=0.95, share_prefill=share)
    synchronize()
    return round(sum(d.n_tokens for d in decoded.values()) / (time.perf_counter() - started), 1)


def synthetic_pairs(n: int) -> list[PreferencePair]:
    words = "the a cat dog runs blue green quickly over under house tree river sky".split()
    rng = random.Random(0)

    def text(length: int) -> str:
        return " ".join(rng.choice(words) for _ in range(length))

    return [PreferencePair(prompt_id=str(i), prompt=text(20), chosen=text(50), rejected=text(50), score_chosen=1, score_rejected=0,
                           similarity=0) for i in range(n)]


class StepClock(TrainerCallback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_step_end(self, *args, **kwargs):
        synchronize()
        self.stamps.append(time.perf_counter())

    def median_step_s(self) -> float | None:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(gaps) if gaps else None


def main(checkpoint: str, out: Path, label: str | None = None) -> None:
    result: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    meta = build_meta(__file__, effective_dtype(ModelConfig().dtype), label=label)
    path = new_result_path(meta, out)

    def record(key, value):  # the file is rewritten after each figure, so a probe cut short keeps what it measured
        result[key] = value
        print(key, value, flush=True)
        dump_result(path, meta, result)

    prompts = [p for p in builtin_prompts(0, 0.25) if p.split == "train"]
    tokenizer, model = load_tokenizer(checkpoint), load_model(checkpoint, ModelConfig())
    for n in (16, 64):
        for share in (False, True):
            generation_rate(model, tokenizer, prompts[:n], share, 8)  # warm-up at this shape
        rates = [generation_rate(model, tokenizer, prompts[:n], share, 64) for share in (False, True, False, True)]
        record(f"generation_{n * 4}_sequences_tok_per_s", {"plain": rates[0::2], "shared_prefill": rates[1::2]})
    del model
    pairs = synthetic_pairs(256)
    for micro in (None, 2):
        steps: list[float] = []
        config = TrainConfig(epochs=1, batch_size=32, micro_batch_size=micro, beta=[0.1], learning_rate=[5e-5], lora_r=8, lora_alpha=16,
                             max_length=256, heldout_share=0, nll_weight=0.0, replay_share=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            run = train_policy(TrainJob(checkpoint=checkpoint, pairs=pairs, config=config, model=ModelConfig(), round_index=1,
                                        output_dir=Path(tmp) / "out"), lambda logs, step: steps.append(time.perf_counter()))
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        record(f"train_micro_{micro or 'whole'}", {"runtime_s": run.runtime_s, "pairs_per_s": run.pairs_per_s, "mfu": run.mfu,
                                                   "steps": run.n_steps, "median_step_s": statistics.median(gaps) if gaps else None})
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        seconds = guide_train(checkpoint, pairs[:64], tmp, callbacks=[clock])
    record("guide_train", {"train_s": seconds, "pairs_per_s": 64 / seconds, "steps": len(clock.stamps), "median_step_s": clock.median_step_s()})


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else RESULTS_DIR, sys.argv[3] if len(sys.argv) > 3 else None)
