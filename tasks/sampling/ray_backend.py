"""The ``ray`` generation backend: a stage's requests split across Ray actors, each running one
engine (``generate.ray.engine``: ``hf`` on CPUs or GPUs, ``vllm`` on GPUs).

The work is cut into the inner engine's own seeded units (the ``hf`` sampler's length-grouped
batches, vLLM's prompt groups), numbered as one process would number them, and dealt out among
``generate.ray.num_actors`` actors; a unit's seed is its number's, so the samples are those of the
one-process engine at the same seed, whatever the number of actors (up to float rounding when
an actor's engine runs with another number of threads: the sums come in another order). An actor reads the policy
checkpoint from its node's disk when it is there (nodes of one machine, a shared volume), otherwise
from a copy sent once through Ray's object store.

The process must have joined the cluster (``infra.ray_cluster.join_cluster``, which the round does
when a stage uses Ray); otherwise a Ray instance is started in this process.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

from infra.settings import GenerateConfig, ModelConfig
from tasks.sampling.backends import BACKENDS, SamplingBackend
from tasks.sampling.requests import Decoded, SampleRequest


class RayActorFailed(RuntimeError):
    """A sampling actor died (its node went away, or it ran out of memory)."""


def _pack(folder: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname="checkpoint")
    return buffer.getvalue()


def _unpack(data: bytes) -> str:
    target = Path(tempfile.mkdtemp(prefix="flywheel-ray-checkpoint-"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(target, filter="data")
    return str(target / "checkpoint")


class SamplerActor:
    """One engine on one Ray worker (wrapped with ``ray.remote`` when the backend opens)."""

    def __init__(self, checkpoint: str, generate: dict, model: dict, shipped: list):
        import ray
        import torch

        config, model_config = GenerateConfig.model_validate(generate), ModelConfig.model_validate(model)
        torch.set_num_threads(max(1, int(config.ray.cpus_per_actor)))  # its share of the node's cores, not all of them
        if not Path(checkpoint).exists():
            checkpoint = _unpack(ray.get(shipped[0]))  # a node of another machine: the copy sent by the driver
        self.engine = BACKENDS.get(config.ray.engine)(checkpoint, config, model_config)

    def sample(self, requests: list[SampleRequest], part: list[int], max_new_tokens: int, batch_size: int, seed: int,
               top_p: float) -> dict[tuple, Decoded]:
        return self.engine.sample(requests, max_new_tokens, batch_size, seed, top_p=top_p, part=part)

    def units(self, requests: list[SampleRequest], batch_size: int) -> int:
        return self.engine.units(requests, batch_size)


def _other_machines() -> bool:
    """Whether any live node of the cluster is on another machine than this process."""
    import ray

    here = ray.util.get_node_ip_address()
    return any(node["Alive"] and node["NodeManagerAddress"] != here for node in ray.nodes())


class RayBackend(SamplingBackend):
    """``generate.ray.num_actors`` actors, each with a ``generate.ray.engine`` engine on ``checkpoint``."""

    name = "ray"

    def __init__(self, checkpoint: str, config: GenerateConfig, model: ModelConfig):
        import ray

        super().__init__(checkpoint, config, model)
        if config.ray.engine == "ray":
            raise ValueError("generate.ray.engine cannot be 'ray'")
        if not ray.is_initialized():
            from infra.ray_cluster import join_cluster
            from infra.settings import RayConfig

            join_cluster(RayConfig())
        settings = config.ray
        shipped = [ray.put(_pack(checkpoint))] if _other_machines() else []
        actor = ray.remote(num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=0)(SamplerActor)
        payload = (checkpoint, config.model_dump(mode="json"), model.model_dump(mode="json"), shipped)
        self.actors = [actor.remote(*payload) for _ in range(settings.num_actors)]

    def sample(self, requests, max_new_tokens, batch_size, seed, top_p=1.0, progress=None, part=None):
        if not requests:
            return {}
        n_units = self._get([self.actors[0].units.remote(requests, batch_size)])[0]
        units = sorted(set(range(n_units) if part is None else part))
        shares = [units[i::len(self.actors)] for i in range(len(self.actors))]
        calls = [a.sample.remote(requests, share, max_new_tokens, batch_size, seed, top_p)
                 for a, share in zip(self.actors, shares) if share]
        results: dict[tuple, Decoded] = {}
        for answered in self._get(calls):
            results.update(answered)
        return results

    def units(self, requests, batch_size):
        return self._get([self.actors[0].units.remote(requests, batch_size)])[0]

    def _get(self, calls: list) -> list:
        import ray

        try:
            return ray.get(calls)
        except ray.exceptions.RayActorError as err:
            raise RayActorFailed(f"generate.backend 'ray': a sampling actor died ({err.__class__.__name__}: "
                                 f"{str(err).splitlines()[0]}); the stage's answers are not written, a rerun samples "
                                 "them again") from err

    def close(self) -> None:
        import ray

        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
