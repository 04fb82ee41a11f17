"""What a prompt set must hold before a round starts: something the judge can score, and prompts that fit the model.

Reads: the prompts the round would read (with their file's line numbers where there is a file), and
the model's config.json and tokenizer where they are on this machine. Writes nothing.

- **Constraints for the verifier.** The verifier judge scores an answer by the prompt's IFEval
  constraints, less failure-mode penalties. A training pool with no constraint at all leaves only
  the penalties to tell candidates apart: nearly every pair ties and a round keeps no pairs. Such a
  set is refused under the verifier, with the two fixes.
- **Prompts that fit.** A prompt is answered within the model's context (``max_position_embeddings``;
  with backend 'vllm', at most ``generate.vllm.max_model_len``) less the answer budget (the larger of
  ``generate.max_new_tokens`` and ``evaluate.max_new_tokens``). A longer one is refused with its line.

Counting tokens: words first, the tokenizer only where the bounds cannot decide.

- Each whitespace-separated word is at least one token (the byte-level BPE and SentencePiece tokenizers
  of causal LMs split on whitespace before merging), so a prompt of more words than the budget is
  refused without a tokenizer.
- Each token stands for at least one byte of UTF-8 text, so a prompt of at most the budget less
  ``TEMPLATE_ALLOWANCE`` bytes fits, whatever the chat template adds (up to that many tokens).
- A prompt between the two is counted exactly, through the model's chat template, when the tokenizer
  is on this machine (a local folder, a downloaded hub id, the bundled model once converted), which
  takes about a second and only for such prompts. Where it is not, only the word bound applies,
  and a prompt it cannot prove too long passes. Where the context itself is unknown (a hub id not
  downloaded yet), no length is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from infra.model_source import context_length, hub_model, local_model_file
from infra.records import Prompt
from infra.settings import FlywheelConfig

VERIFIER_JUDGES = ("verifier", "ifeval")  # the judges that score by constraints alone
TEMPLATE_ALLOWANCE = 256  # tokens a chat template may add around the prompt (SmolLM2's adds about 30)
MAX_LISTED = 5  # too-long prompts named one by one; the rest are counted

Located = tuple[str, Prompt]  # where a prompt is ("prompts.jsonl: line 3", "prompt b-tea-0a1b2c"), and the prompt


def constraint_problems(config: FlywheelConfig, prompts: Sequence[Prompt], where: str) -> list[str]:
    """Under the verifier judge, a problem when no training prompt carries a constraint."""
    train = [p for p in prompts if p.split == "train"]
    if config.judge.name not in VERIFIER_JUDGES or not train or any(p.constraints for p in train):
        return []
    return [f"prompts: none of the {len(train)} training prompts in {where} carries a constraint, and judge.name "
            f"{config.judge.name!r} scores answers by their constraints: candidates would differ only by failure-mode "
            "penalties, nearly every pair would tie and the round would keep no pairs. Add IFEval constraints to the "
            "prompts (\"constraints\": [{\"id\": ..., \"kwargs\": {...}}], as in configs/example-prompts.jsonl), or judge "
            "with a model: judge.name=openai and its judge.openai settings (configs/example-custom.yaml)"]


def prompt_budget(config: FlywheelConfig) -> tuple[int, str] | None:
    """Tokens left for a prompt, and how that was reckoned; None when the model's context is unknown here."""
    context = context_length(config.model.base, config.storage.data_dir)
    if context is None:
        return None
    why = f"the model's context is {context} tokens"
    if config.generate.backend == "vllm" and config.generate.vllm.max_model_len < context:
        context = config.generate.vllm.max_model_len
        why = f"generate.vllm.max_model_len is {context} tokens"
    answer, field = max((config.generate.max_new_tokens, "generate.max_new_tokens"), (config.evaluate.max_new_tokens, "evaluate.max_new_tokens"))
    return context - answer, f"{why} and {field} keeps {answer} for the answer"


def length_problems(config: FlywheelConfig, located: Sequence[Located]) -> list[str]:
    """A problem for each prompt longer than the model's context less the answer budget (see the module's docstring)."""
    budget = prompt_budget(config)
    if budget is None:
        return []
    limit, why = budget
    if limit <= 0:
        return [f"generate.max_new_tokens: no room is left for a prompt ({why}): lower the answer budget"]
    counter = _TokenCounter(config)
    too_long = []
    for where, prompt in located:
        if found := _too_long(prompt.text, limit, counter):
            too_long.append((where, *found))
    problems = [f"prompts: {where}: the prompt is {'' if exact else 'at least '}{n} tokens long, more than the {limit} "
                f"left for a prompt ({why}): shorten it or leave it out"
                for where, n, exact in too_long[:MAX_LISTED]]
    if len(too_long) > MAX_LISTED:
        problems.append(f"prompts: {len(too_long) - MAX_LISTED} more prompts are too long")
    return problems


def _too_long(text: str, limit: int, counter: "_TokenCounter") -> tuple[int, bool] | None:
    """(tokens, exact) when ``text`` cannot fit in ``limit`` tokens; None when it fits or cannot be shown not to."""
    words = len(text.split())
    if words > limit:
        return words, False  # a lower bound: no tokenizer needed
    if len(text.encode("utf-8")) + TEMPLATE_ALLOWANCE <= limit:
        return None  # an upper bound: it fits
    tokens = counter.count(text)
    return (tokens, True) if tokens is not None and tokens > limit else None


class _TokenCounter:
    """Counts a prompt's tokens as generation sends it (chat template included); loads the tokenizer
    on first use, and only when it is on this machine."""

    def __init__(self, config: FlywheelConfig):
        self.base, self.data_dir = config.model.base, config.storage.data_dir
        self._tokenizer = None
        self._tried = False

    def count(self, text: str) -> int | None:
        tokenizer = self._load()
        if tokenizer is None:
            return None
        from tasks.sampling.requests import render_chat

        return len(tokenizer(render_chat(tokenizer, text), add_special_tokens=False)["input_ids"])

    def _load(self):
        if not self._tried:
            self._tried = True
            self._tokenizer = _local_tokenizer(self.base, self.data_dir)
        return self._tokenizer


def _local_tokenizer(base: str, data_dir: Path):
    """The model's tokenizer from this machine, or None where it would need a download or a conversion."""
    found = local_model_file(base, "tokenizer_config.json", data_dir)
    if found is None:
        return None
    from transformers import AutoTokenizer

    if hub_model(base):
        return AutoTokenizer.from_pretrained(base, local_files_only=True)
    return AutoTokenizer.from_pretrained(found.parent)
