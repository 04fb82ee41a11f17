"""`ray`: the Ray cluster the heavy stages may run on, and the per-stage Ray settings
(`train.ray`, `generate.ray`) that say how much of it they take."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from infra.settings.base import Section


class RayConfig(Section):
    """Where the Ray cluster is; the stages that use it say so themselves (train.engine, generate.backend)."""

    address: str | None = Field(
        None,
        description="The cluster to join: 'host:6379' of a `ray start --head` node, 'ray://host:10001' through Ray "
        "Client, or 'auto' (a node of this machine). None: env RAY_ADDRESS, else no cluster is configured and "
        "train.engine 'ray' / generate.backend 'ray' start a local Ray instance in this process.",
    )
    namespace: str = Field("flywheel", description="Ray namespace of the stages' jobs and actors (apart from other users').")
    forward_env: list[str] = Field(
        ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "FLYWHEEL_ARTIFACT_ROOT", "AWS_ENDPOINT_URL",
         "MLFLOW_TRACKING_URI", "OMP_NUM_THREADS"],
        description="Environment variables of the driver passed to every Ray worker (runtime_env) when set. "
        "Never list secrets here: Ray shows a job's runtime_env in its dashboard; give the nodes their credentials "
        "(AWS_ACCESS_KEY_ID, ...) in their own environment.",
    )

    def resolved_address(self) -> str | None:
        return self.address or os.environ.get("RAY_ADDRESS") or None

    @field_validator("forward_env")
    @classmethod
    def _no_secrets(cls, names: list[str]) -> list[str]:
        secret = [n for n in names if any(word in n.upper() for word in ("SECRET", "TOKEN", "PASSWORD", "API_KEY", "AUTH"))]
        if secret:
            raise ValueError(f"ray.forward_env: {secret} look like secrets; Ray shows a job's runtime_env in its "
                             "dashboard: set them in the nodes' own environment instead")
        return names


class RayTrainConfig(Section):
    """train.engine 'ray': the training as a Ray Train TorchTrainer."""

    num_workers: int = Field(
        2, ge=1, description="Training workers (Ray Train's DDP ranks), one per GPU with use_gpu; train.batch_size "
        "must be a multiple of it (each takes batch_size / num_workers pairs a step).",
    )
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); false: CPU workers over gloo.")
    resources_per_worker: dict[str, float] = Field(
        {"CPU": 1}, description="Ray resources each worker reserves, e.g. {CPU: 8, GPU: 1}; the cluster must have "
        "num_workers x these free or the training waits for them.",
    )
    max_failures: int = Field(
        1, ge=-1, description="Times Ray Train restarts the workers after a worker or its node dies (-1: without end). "
        "A restart trains again from the start of the round's training, reading the reference log-probabilities "
        "already computed; past the count the round fails with the reason and a rerun resumes at the train stage.",
    )
    deepspeed_config: str | None = Field(
        None, description="A DeepSpeed JSON config (e.g. configs/deepspeed-zero3.json, ZeRO-3) the workers train "
        "with, on GPUs only; None: plain DDP.",
    )
    start_timeout_s: float = Field(
        120, gt=0, description="How long Ray Train waits for the workers' resources and start-up before that attempt "
        "counts as a failure (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S).",
    )


class RayGenerateConfig(Section):
    """generate.backend 'ray': the prompts split across Ray actors, each running one engine."""

    num_actors: int = Field(2, ge=1, description="Sampling actors; the round's batches are dealt out among them.")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="What each actor runs: 'hf' (transformers, CPU or GPU) or 'vllm' (vLLM's offline engine, "
        "one per GPU actor, generate.vllm's settings). Same seed: the same samples whatever num_actors is (up to float "
        "rounding where the threads per engine differ from one process's).",
    )
    cpus_per_actor: float = Field(
        1, gt=0, description="Ray CPUs each actor reserves (> 0); on CPU actors also the torch threads it uses. "
        "num_actors x this must be free in the cluster, or the actors wait for it.",
    )
    gpus_per_actor: float = Field(0, ge=0, description="Ray GPUs each actor reserves (1 for a vLLM engine).")
