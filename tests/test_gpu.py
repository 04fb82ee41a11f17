"""The CUDA paths of the stage cores: sampling and training on a GPU (bf16 where the GPU has it),
and the matmul peak that MFU is measured against. Skipped where CUDA is missing (CI, the CPU
machines); run them on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import math

import pytest
import torch

from infra.records import PreferencePair, Prompt
from infra.settings import GenerateConfig, ModelConfig, TrainConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [Prompt(id=f"p{i}", text="Tell me about cats. " * (i + 1)) for i in range(5)]


def test_hf_backend_samples_on_the_gpu_in_bf16_and_is_seeded(tiny_model):
    from tasks.generate import generate_candidates
    from tasks.sampling.backends import open_backend

    config = GenerateConfig(n_candidates=4, temperatures=[0.7, 1.0], max_new_tokens=12, batch_size=16)
    with open_backend(tiny_model, config, ModelConfig()) as backend:
        weight = next(backend.model.parameters())
        assert weight.device.type == "cuda"
        assert weight.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
        first = generate_candidates(backend, PROMPTS, config, seed=1, progress=False)
        again = generate_candidates(backend, PROMPTS, config, seed=1, progress=False)
        other = generate_candidates(backend, PROMPTS, config, seed=2, progress=False)
    assert len(first) == 20 and [sum(c.prompt_id == p.id for c in first) for p in PROMPTS] == [4] * 5
    assert [c.temperature for c in first if c.prompt_id == "p0"] == [0.7, 1.0, 0.7, 1.0]
    assert all(0 < c.n_tokens <= 12 for c in first)
    assert first == again and first != other


def test_shared_prefill_gives_the_same_samples_on_the_gpu(tiny_model, monkeypatch):
    """In fp32 the shared prefill leads to the plain prefill's logits (to rounding), so at the same
    seed to the same samples, as on the CPU (tests/test_generate.py)."""
    from infra.models import load_model, load_tokenizer
    from tasks.sampling.decode import sample_batched
    from tasks.sampling.requests import SampleRequest
    from tests.test_generate import FirstStepLogits, assert_same_logits_mostly_same_samples

    model, tokenizer = load_model(tiny_model, ModelConfig(dtype="fp32")), load_tokenizer(tiny_model)
    assert next(model.parameters()).device.type == "cuda"
    requests = [SampleRequest(key=(p.id, i), prompt=p.text, temperature=(0.6, 1.0, 1.4)[i % 3]) for p in PROMPTS for i in range(4)]
    logits = FirstStepLogits(monkeypatch)
    shared = sample_batched(model, tokenizer, requests, max_new_tokens=8, batch_size=8, seed=5, share_prefill=True)
    shared_logits = logits.take()
    plain = sample_batched(model, tokenizer, requests, max_new_tokens=8, batch_size=8, seed=5, share_prefill=False)
    assert len(shared) == 20 and list(shared) == list(plain)
    assert_same_logits_mostly_same_samples(shared_logits, logits.take(), list(shared.values()), list(plain.values()))


def _pairs(n: int) -> list[PreferencePair]:
    return [PreferencePair(prompt_id=str(i), prompt=f"Name a colour, number {i}.", chosen=f"Blue is a fine colour, {i}.",
                           rejected=f"no no no no {i}", score_chosen=1.0, score_rejected=0.0, similarity=0.2) for i in range(n)]


def test_dpo_trains_on_the_gpu(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from tasks.train import TrainJob, train_policy

    config = TrainConfig(epochs=2, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0, nll_weight=0)
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=_pairs(8), config=config, model=ModelConfig(), round_index=1, output_dir=tmp_path / "out"))
    # The reference is the adapter-disabled policy: the first loss is ln 2 (bf16 autocast: a looser tolerance).
    assert result.initial_loss == pytest.approx(math.log(2), abs=2e-2)
    assert all(math.isfinite(h["loss"]) for h in result.log_history if "loss" in h)
    assert result.n_steps == 4 and result.trained_tokens > 0 and 0 < result.mfu < 1
    assert result.final_reward_margin > 0
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    base, merged = load_file(f"{tiny_model}/model.safetensors"), load_file(str(tmp_path / "out" / "merged" / "model.safetensors"))
    assert base.keys() == merged.keys()
    assert any(not torch.equal(merged[k].float(), base[k].float()) for k in base), "merging the adapter changed no weight"


def test_the_gpu_matmul_peak_is_measured_on_the_gpu():
    from tasks.training.flops import measured_peak_flops

    gpu = measured_peak_flops("cuda", torch.bfloat16, seconds=0.3)
    cpu = measured_peak_flops("cpu", torch.float32, size=512, seconds=0.3)
    assert gpu > cpu > 0


def test_a_shared_prompt_trains_as_two_rows_do_on_the_gpu(tiny_model, tmp_path):
    """train.share_prompt on CUDA (SDPA with a 4D mask): the same reference log-probs and losses
    as two rows a pair, in fp32."""
    from tasks.train import TrainJob, train_policy

    runs = {}
    for share in (False, True):
        config = TrainConfig(epochs=1, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8,
                             heldout_share=0, nll_weight=0.5, share_prompt=share)
        runs[share] = train_policy(TrainJob(checkpoint=tiny_model, pairs=_pairs(8), config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                            output_dir=tmp_path / str(share)))
    flat = [x for row in runs[False].reference_logps for x in row]
    assert [x for row in runs[True].reference_logps for x in row] == pytest.approx(flat, abs=1e-3)
    losses = [[h["loss"] for h in r.log_history if "loss" in h and "train_loss" not in h] for r in runs.values()]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3) and runs[True].trained_tokens < runs[False].trained_tokens
