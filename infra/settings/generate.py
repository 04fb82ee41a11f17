"""`generate`: sampling the candidates (and every other stage that samples), with the backends' own settings."""

from __future__ import annotations

from pydantic import Field, model_validator

from infra.settings.base import Section
from infra.settings.ray import RayGenerateConfig


class OpenAIGenerateConfig(Section):
    """Sampling from an OpenAI-compatible server (generate.backend 'openai')."""

    base_url: str | None = Field(None, description="Server base URL, e.g. http://127.0.0.1:8000/v1 for `vllm serve`; None: OpenAI.")
    model: str | None = Field(
        None, description="Model name sent to the server; None: the policy's checkpoint path (`transformers serve` loads any "
        "local path it is sent; `vllm serve` serves the one model it started with, so the champion and challenger of the "
        "pairwise eval would be the same model there: use backend 'vllm' for the eval).",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (local servers need none).")
    api_key_block: str | None = Field(None, description="Prefect Secret block holding the API key (used when set).")
    use_n: bool = Field(
        True, description="Ask for a prompt's samples at one temperature in one request (`n`; vLLM and OpenAI share the "
        "prompt's prefill). `transformers serve` ignores `n`: false sends one request per sample.",
    )
    max_in_flight: int = Field(
        8, ge=1, description="Requests awaiting an answer at once: raise it to keep a batching server (vLLM) busy, "
        "lower it for a rate-limited API.",
    )
    timeout_s: float = Field(
        600, gt=0, description="Seconds one request may take (all of a prompt's samples when use_n); a timeout is "
        "retried and counts against max_retries.",
    )
    max_retries: int = Field(3, ge=0, description="Retries of 429, 5xx and timeouts (the openai client's backoff).")


class VLLMGenerateConfig(Section):
    """vLLM's offline engine (generate.backend 'vllm'), on a CUDA machine with vllm installed."""

    gpu_memory_utilization: float = Field(
        0.6, gt=0, le=1, description="Share of GPU memory the engine takes for weights and KV cache; the rest stays free "
        "for the stages after it in the same process (training).",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse a prompt's KV cache across its samples and requests.")
    max_model_len: int = Field(2048, ge=64, description="Longest prompt + answer, in tokens (sizes the KV cache).")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs the model is split over (vLLM's tensor parallelism): the machine needs that many, and "
        "it must divide the model's attention heads.",
    )


class GenerateConfig(Section):
    n_candidates: int = Field(
        6, ge=2, description="k: samples per prompt (>= 2), sample i at temperatures[i mod len(temperatures)]. The judge "
        "compares them and the filter keeps the prompt's most decisive pair; generation and judging cost grow with k.",
    )
    temperatures: list[float] = Field(
        [0.6, 0.8, 1.0],
        min_length=1,
        description="Sampling temperature of candidate i (cycled when shorter than n_candidates). "
        "A spread gives the judge real differences to choose between.",
    )
    top_p: float = Field(
        0.95, gt=0, le=1, description="Nucleus sampling of the candidates: each token is drawn from the most likely tokens "
        "whose probabilities add up to top_p (0 < top_p <= 1; 1 turns it off).",
    )
    # Measured: the bundled SmolLM2-135M-Instruct on 48 built-in train prompts x temperatures
    # 0.6/0.8/1.0 (top_p 0.95, bf16 on a CPU), decoded to 256 tokens. Share cut off at a budget
    # of 80/120/160/200/256 tokens: 51.4/40.3/30.6/25.7/24.3%; of the answers that end by 256, 39/23/9/2/0 of 109
    # would be cut; mean tokens 59/77/91/102/116. The other 35 (24%) had not ended by 256 (14 of them loop or
    # degenerate, the rest ramble or list on): no affordable budget makes truncation rare (<= 5%), so the filter
    # never lets a truncated candidate be chosen. 160 keeps 100 of the 109 answers that end at 0.8x the cost of
    # 200 (which keeps 107): decoding runs to the budget whenever one row of a batch rambles on.
    max_new_tokens: int = Field(
        160, ge=1,
        description="Tokens generated per candidate at most; one that hits it is marked truncated and never chosen. "
        "Base policy, built-in prompts: 51% cut at 80 tokens, 31% at 160, 26% at 200, 24% at 256 (answers that "
        "do not end).",
    )
    batch_size: int = Field(64, ge=1, description="Sequences decoded together; batches are grouped by prompt length.")
    seed: int = Field(0, description="Base seed; each round and batch derive their own from it.")
    backend: str = Field(
        "hf", description="Registered generation backend (tasks/sampling/backends.py) of every stage that samples (candidates, "
        "pairwise eval, compare): 'hf' (transformers, in process), 'openai' (an OpenAI-compatible server, generate.openai) "
        "'vllm' (vLLM's offline engine on a GPU, generate.vllm) or 'ray' (the prompts split across Ray actors, generate.ray).",
    )
    deployment: str | None = Field(
        None,
        description="Prefect deployment ('flow/deployment', e.g. 'flywheel-generate/generate-gpu') that samples the round's "
        "candidates on its work pool (a GPU worker, with backend 'vllm' where its image has vLLM); None: in the round's process.",
    )
    dispatch_timeout_s: float = Field(2 * 3600, gt=0, description="How long the round waits for a dispatched generation run.")
    share_prefill: bool = Field(
        True, description="Backend 'hf': the k candidates of a prompt share one prefill (the prompt's KV cache is "
        "computed once and copied to each row), and the opening all prompts of a batch share (the chat template's "
        "system prompt) is encoded once. Same samples either way; off only to measure it.",
    )
    openai: OpenAIGenerateConfig = Field(default_factory=OpenAIGenerateConfig, description="Backend 'openai' settings.")
    vllm: VLLMGenerateConfig = Field(default_factory=VLLMGenerateConfig, description="Backend 'vllm' settings.")
    ray: RayGenerateConfig = Field(default_factory=RayGenerateConfig, description="Backend 'ray' settings (the cluster: ray.address).")

    @model_validator(mode="after")
    def _positive_temperatures(self) -> "GenerateConfig":
        if any(t <= 0 for t in self.temperatures):
            raise ValueError("generate.temperatures must all be > 0 (sampling)")
        return self
