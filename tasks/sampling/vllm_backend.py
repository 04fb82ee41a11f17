"""Generation backend 'vllm': vLLM's offline ``LLM`` engine, for machines with a CUDA GPU.

Prefix caching on (a prompt's KV cache is computed once for all its samples), one request per
prompt and temperature with ``n`` samples, so candidates keep their own temperatures. vLLM pins
its own torch and transformers, so it is not a dependency of Flywheel: ``docker/Dockerfile.cuda``
installs it in the GPU worker's image, and it is imported only when this backend opens.
"""

from __future__ import annotations

from tasks.sampling.backends import SamplingBackend
from tasks.sampling.requests import Decoded, group_requests, render_chat


class VLLMMissingError(RuntimeError):
    """vllm is not installed where the backend was opened."""


class VLLMBackend(SamplingBackend):
    name = "vllm"

    def __init__(self, checkpoint, config, model):
        super().__init__(checkpoint, config, model)
        try:
            from vllm import LLM
        except ImportError as exc:
            raise VLLMMissingError(
                f"generate.backend 'vllm' needs the vllm package, which is not importable here ({exc}); it runs in the "
                "GPU worker's image (docker/Dockerfile.cuda), or use generate.backend 'hf' or 'openai'") from exc
        from infra.models import load_tokenizer

        settings = config.vllm
        dtype = {"auto": "auto", "bf16": "bfloat16", "fp32": "float32"}[model.dtype]
        from transformers import GenerationConfig

        self.tokenizer = load_tokenizer(checkpoint)
        configured = GenerationConfig.from_pretrained(checkpoint).eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
        self.engine = LLM(model=checkpoint, dtype=dtype, seed=config.seed, enable_prefix_caching=settings.enable_prefix_caching,
                          gpu_memory_utilization=settings.gpu_memory_utilization, max_model_len=settings.max_model_len,
                          tensor_parallel_size=settings.tensor_parallel_size)

    def units(self, requests, batch_size):
        return len(group_requests(requests))

    def sample(self, requests, max_new_tokens, batch_size, seed, top_p=1.0, progress=None, part=None):
        """``part``: only the prompt groups of these numbers (each group's seed is its number's)."""
        from vllm import SamplingParams

        numbered = list(enumerate(group_requests(requests)))
        if part is not None:
            wanted = set(part)
            numbered = [(no, g) for no, g in numbered if no in wanted]
        groups = [g for _, g in numbered]
        prompts = [{"prompt_token_ids": self.tokenizer(render_chat(self.tokenizer, g.prompt), add_special_tokens=False)["input_ids"]}
                   for g in groups]
        params = [
            SamplingParams(n=len(g.keys), temperature=max(g.temperature, 0.0), top_p=top_p if g.temperature > 0 else 1.0,
                           max_tokens=max_new_tokens, seed=seed * 100_003 + no)
            for no, g in numbered
        ]
        outputs = self.engine.generate(prompts, params, use_tqdm=progress is not None)
        results: dict[tuple, Decoded] = {}
        for group, output in zip(groups, outputs):
            for key, sample in zip(group.keys, sorted(output.outputs, key=lambda o: o.index)):
                ids = list(sample.token_ids)
                n = len(ids) - (1 if ids and ids[-1] in self.eos_ids else 0)  # new tokens before EOS, as the hf backend counts
                results[key] = Decoded(sample.text.strip(), n, truncated=sample.finish_reason == "length")
        return results

    def close(self) -> None:
        from infra.memory import release_memory

        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            try:  # frees the GPU memory the engine holds, where this vLLM version offers it
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                del engine
                cleanup_dist_env_and_memory()
            except ImportError:
                pass
        release_memory()
