"""How far a trained policy moved from the policy it started from: KL(policy || start), estimated
on the policy's own samples.

KL(p || q) = E_{y ~ p}[log p(y|x) - log q(y|x)]: sample one answer per prompt from the policy
at temperature 1, score it under both models, average the difference (nats per answer). The
answers are scored as their text re-tokenises, the same tokens for both models. Near 0 the
policy barely moved (beta too strong, or nothing learnt); a large value next to failure modes
is the policy running away from its reference.
"""

from __future__ import annotations

import torch

from infra.records import Prompt
from infra.settings import EvalConfig, GenerateConfig, ModelConfig


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 8) -> list[float]:
    """Each answer's summed token log-probability given its prompt (rendered with the chat template)."""
    from tasks.sampling.requests import render_chat

    device = next(model.parameters()).device
    totals: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size]):
            context = tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            rows.append((context, tokenizer(answer, add_special_tokens=False)["input_ids"]))
        width = max(len(c) + len(a) for c, a in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)  # the answer's tokens
        for i, (context, answer) in enumerate(rows):
            ids[i, :len(context) + len(answer)] = torch.tensor(context + answer)
            mask[i, :len(context) + len(answer)] = 1
            scored[i, len(context):len(context) + len(answer)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        # Token t is predicted at position t - 1.
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        totals += (logps * scored[:, 1:].to(device)).sum(dim=-1).tolist()
        del logits, logps
    return totals


def sampled_kl(policy_checkpoint: str, start_checkpoint: str, prompts: list[Prompt], generate: GenerateConfig,
               model_config: ModelConfig, evaluate: EvalConfig) -> float:
    """Mean over ``prompts`` of log p_policy(y) - log p_start(y), y sampled from the policy at temperature 1."""
    from infra.memory import release_memory
    from infra.models import load_model, load_tokenizer
    from tasks.evaluate import generate_completions
    from tasks.sampling.backends import open_backend

    with open_backend(policy_checkpoint, generate, model_config) as backend:
        answers = generate_completions(backend, prompts, "challenger", evaluate.model_copy(update={"temperature": 1.0}))
    texts, answer_texts = [p.text for p in prompts], [a.text for a in answers]
    tokenizer = load_tokenizer(policy_checkpoint)
    scores = []
    for checkpoint in (policy_checkpoint, start_checkpoint):  # one model in memory at a time
        model = load_model(checkpoint, model_config).eval()
        scores.append(answer_logprobs(model, tokenizer, texts, answer_texts))
        del model
        release_memory()
    return sum(p - q for p, q in zip(*scores)) / max(1, len(prompts))
