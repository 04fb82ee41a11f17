"""Generation backends: what samples the answers of every stage that samples (the candidates, the
pairwise eval's answers, `flywheel compare`), chosen by ``generate.backend``.

* ``hf`` (default): transformers in this process (``decode.sample_batched``): batches
  grouped by prompt length, one temperature per row, a prompt's k rows sharing one prefill.
* ``openai``: an OpenAI-compatible server (``vllm serve``, ``transformers serve``, ...) through
  the openai client, a prompt's samples at one temperature in one request (``n``).
* ``vllm``: vLLM's offline engine with prefix caching, ``n`` samples per prompt and temperature,
  for GPU machines (``docker/Dockerfile.cuda`` installs vllm, which pins its own torch).
* ``ray``: the work split across Ray actors (``ray_backend.py``), each running ``hf`` or ``vllm``;
  the same seed gives the same samples whatever the number of actors.

A backend is opened on one policy checkpoint and closed when the stage is done with it, so its
model leaves memory before the next one loads. Every backend takes ``SampleRequest``s and answers
a ``Decoded`` per request key (``requests.py``)::

    with open_backend(checkpoint, config.generate, config.model) as backend:
        decoded = backend.sample(requests, max_new_tokens=160, batch_size=64, seed=0, top_p=0.95)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from infra.registry import Registry
from infra.settings import GenerateConfig, ModelConfig
from tasks.sampling.requests import Decoded, SampleRequest


class SamplingBackend(ABC):
    """Samples answers to chat prompts from one policy checkpoint."""

    name = ""

    def __init__(self, checkpoint: str, config: GenerateConfig, model: ModelConfig):
        self.checkpoint, self.config, self.model_config = checkpoint, config, model

    @abstractmethod
    def sample(self, requests: list[SampleRequest], max_new_tokens: int, batch_size: int, seed: int,
               top_p: float = 1.0, progress: str | None = None) -> dict[tuple, Decoded]:
        """Every request's answer by its key; temperature 0 decodes greedily. ``batch_size`` is a
        hint (sequences decoded together) that servers and engines may ignore."""

    def units(self, requests: list[SampleRequest], batch_size: int) -> int:
        """How many independently seeded units of work (``sample``'s ``part`` numbers) the requests make."""
        raise NotImplementedError(f"generate.backend '{self.name}' cannot be split across Ray actors")

    def close(self) -> None:
        """Free what the backend holds (its model, an engine)."""

    def __enter__(self) -> "SamplingBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


BACKENDS: Registry[type[SamplingBackend]] = Registry("generation backend", base=SamplingBackend)


@BACKENDS.register("hf")
class HFBackend(SamplingBackend):
    """transformers in this process; the model loads when the backend opens."""

    name = "hf"

    def __init__(self, checkpoint: str, config: GenerateConfig, model: ModelConfig):
        from infra.models import load_model, load_tokenizer

        super().__init__(checkpoint, config, model)
        self.model, self.tokenizer = load_model(checkpoint, model), load_tokenizer(checkpoint)

    def sample(self, requests, max_new_tokens, batch_size, seed, top_p=1.0, progress=None, part=None):
        # torch and transformers load with the hf backend only, not with the registry
        from tasks.sampling.decode import sample_batched

        return sample_batched(self.model, self.tokenizer, requests, max_new_tokens, batch_size, seed, top_p=top_p,
                              progress=progress, share_prefill=self.config.share_prefill, part=part)

    def units(self, requests, batch_size):
        from tasks.sampling.decode import batch_plan, encode_requests

        return len(batch_plan(encode_requests(self.tokenizer, requests), requests, batch_size))

    def close(self) -> None:
        from infra.memory import release_memory

        self.model = self.tokenizer = None
        release_memory()


BACKENDS.add_lazy("openai", "tasks.sampling.openai_backend:OpenAIBackend")
BACKENDS.add_lazy("vllm", "tasks.sampling.vllm_backend:VLLMBackend")
BACKENDS.add_lazy("ray", "tasks.sampling.ray_backend:RayBackend")


def open_backend(checkpoint: str, config: GenerateConfig, model: ModelConfig) -> SamplingBackend:
    """The configured backend (``config.backend``) opened on ``checkpoint``."""
    return BACKENDS.get(config.backend)(checkpoint, config, model)

