"""A pair's prompt computed once for both answers (tasks/training/packed_pairs.py): the same log-probs
and gradients as TRL's two rows, fewer tokens, and batches it cannot pack left alone."""

import pytest
import torch

from infra.settings import ModelConfig, TrainConfig
from tasks.train import TrainJob, train_policy
from tasks.training import packed_pairs
from tasks.training.packed_pairs import SharedPromptForward, pack_pairs
from tests.test_train import _uneven_pairs


def _paired_batch(tokenizer, triples):
    """TRL's collated DPO batch of (prompt, chosen, rejected) texts, and its labels."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    examples = [{"prompt_ids": ids(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                                 tokenize=False)),
                 "chosen_ids": ids(a) + [tokenizer.eos_token_id], "rejected_ids": ids(b) + [tokenizer.eos_token_id]}
                for q, a, b in triples]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(examples)
    return batch["input_ids"], batch["attention_mask"], batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)


TRIPLES = [
    ("What is the capital of France?", "Paris is the capital of France.", "I think it could be Lyon, or maybe Marseille."),
    ("Write a haiku about the rain falling on an old tin roof at night", "Soft rain on tin", "Rain."),
    ("Hi", "Hello! How can I help you today?", "Hello there, friend, what would you like to talk about?"),
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from trl.trainer.utils import add_fused_lm_head

    from infra.models import load_model, load_tokenizer

    model = load_model(tiny_model, ModelConfig(dtype="fp32"))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model, load_tokenizer(tiny_model)


def _outputs_and_grads(model, forward, input_ids, attention_mask, labels):
    model.zero_grad()
    out = forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, use_cache=False)
    (out.log_probs.sum(dim=1) * torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])).sum().backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_answer_gets_the_log_probs_and_gradients_of_its_own_row(model_and_tokenizer, attention, monkeypatch):
    from tasks.training.trl_internals import lm_head_tiles

    model, tokenizer = model_and_tokenizer
    model.set_attn_implementation(attention)
    input_ids, attention_mask, labels = _paired_batch(tokenizer, TRIPLES)
    packed_rows = []
    pack = packed_pairs.pack_pairs
    monkeypatch.setattr(packed_pairs, "pack_pairs", lambda *a: packed_rows.append(pack(*a)) or packed_rows[-1])
    with lm_head_tiles(torch.device("cpu")):
        two_rows, two_rows_grads = _outputs_and_grads(model, model, input_ids, attention_mask, labels)
        shared, shared_grads = _outputs_and_grads(model, SharedPromptForward(model), input_ids, attention_mask, labels)
    packed = packed_rows[0]
    assert packed is not None and packed.input_ids.shape[0] == 3  # one row a pair, not two
    real_tokens = int(attention_mask.sum())
    prompts = [int((row != -100).nonzero()[0]) for row in labels[:3]]
    assert sum(packed.lengths) == real_tokens - sum(prompts) + 3  # each prompt once, and its last token again
    assert shared.log_probs.shape == two_rows.log_probs.shape
    for name in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(shared, name), getattr(two_rows, name), atol=2e-5), name
    assert torch.equal(shared.is_top1, two_rows.is_top1)
    assert (shared.log_probs != 0).sum() == (labels[:, 1:] != -100).sum()  # zero where there is no label, as TRL's head leaves it
    assert shared_grads.keys() == two_rows_grads.keys() and shared_grads
    for name, grad in two_rows_grads.items():
        assert torch.allclose(shared_grads[name], grad, atol=1e-5, rtol=1e-3), name
    model.set_attn_implementation("sdpa")


def test_the_rejected_answer_does_not_see_the_chosen_one(model_and_tokenizer):
    """Changing the chosen answer leaves the rejected answer's log-probs as they were."""
    model, tokenizer = model_and_tokenizer
    forward = SharedPromptForward(model)
    first = _paired_batch(tokenizer, TRIPLES[:1])
    other = _paired_batch(tokenizer, [(TRIPLES[0][0], "Madrid, I believe, is the capital of France.", TRIPLES[0][2])])
    with torch.no_grad():
        a = forward(input_ids=first[0], attention_mask=first[1], labels=first[2], fused_lm_head=True).log_probs
        b = forward(input_ids=other[0], attention_mask=other[1], labels=other[2], fused_lm_head=True).log_probs
    rejected = (first[2][1, 1:] != -100)
    assert torch.allclose(a[1][rejected], b[1, :len(rejected)][rejected], atol=1e-6)
    assert not torch.allclose(a[0].sum(), b[0].sum())  # the chosen answers differ


def test_batches_that_cannot_be_packed_go_through_unchanged(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    input_ids, attention_mask, labels = _paired_batch(tokenizer, TRIPLES[:2])
    assert pack_pairs(input_ids, labels, attention_mask) is not None
    other_prompt = input_ids.clone()
    other_prompt[2, 3] += 1  # the first pair's rejected row under another prompt
    assert pack_pairs(other_prompt, labels, attention_mask) is None
    no_answer = labels.clone()
    no_answer[1] = -100  # an answer cut away by max_length
    assert pack_pairs(input_ids, no_answer, attention_mask) is None
    left_padded = attention_mask.flip(dims=[1])
    assert pack_pairs(input_ids, labels, left_padded) is None
    assert pack_pairs(input_ids[:3], labels[:3], attention_mask[:3]) is None  # not a paired batch
    with torch.no_grad():
        through = SharedPromptForward(model)(input_ids=other_prompt, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        plain = model(input_ids=other_prompt, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    assert torch.equal(through.log_probs, plain.log_probs)


@pytest.mark.parametrize("micro_batch_size", [1, 2])
def test_training_with_a_shared_prompt_learns_what_two_rows_do(tiny_model, tmp_path, micro_batch_size, monkeypatch):
    """The same reference log-probs and the same losses step by step, NLL term included, from
    fewer tokens through the model; every batch of training and of the reference pass packed."""
    packed_batches = []
    pack = packed_pairs.pack_pairs
    monkeypatch.setattr(packed_pairs, "pack_pairs", lambda *a: packed_batches.append(pack(*a)) or packed_batches[-1])
    pairs = _uneven_pairs(12, 11)
    runs = {}
    for share in (False, True):
        config = TrainConfig(epochs=2, batch_size=4, micro_batch_size=micro_batch_size, learning_rate=[5e-3], beta=[0.1],
                             lora_r=4, lora_alpha=8, heldout_share=0.25, nll_weight=0.5, share_prompt=share)
        runs[share] = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                            output_dir=tmp_path / str(share)))
    two_rows, shared = runs[False], runs[True]
    assert packed_batches and all(p is not None for p in packed_batches)
    flat = [x for row in two_rows.reference_logps + two_rows.heldout_reference_logps for x in row]
    assert [x for row in shared.reference_logps + shared.heldout_reference_logps for x in row] == pytest.approx(flat, abs=1e-4)
    steps = [[h for h in r.log_history if "loss" in h and "train_loss" not in h] for r in (two_rows, shared)]
    assert len(steps[0]) == len(steps[1]) > 2
    for a, b in zip(*steps):
        for key in ("loss", "loss/nll", "loss/preference", "rewards/margins"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (key, a["step"])
    evals = [[h["eval_loss"] for h in r.log_history if "eval_loss" in h] for r in (two_rows, shared)]
    assert evals[0] and evals[1] == pytest.approx(evals[0], rel=1e-4)
    assert shared.trained_tokens < two_rows.trained_tokens
