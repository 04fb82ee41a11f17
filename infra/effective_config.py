"""The configuration a round really ran with, saved beside its artifacts and in its MLflow run.

Values the environment decides (artifact root, tracking URI, S3 endpoint) are written as
resolved; credentials never are: a URL's password is masked, and API keys are never part of
the config in the first place (it names the variable or Prefect block that holds them).
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from infra import layout
from infra.settings import FlywheelConfig
from infra.tracking import tracking_uri

_SECRET_KEY = re.compile(r"(password|secret|token|api_key)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.IGNORECASE)


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secret-looking fields and URL passwords masked."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and value:
            return "***"
        return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", value)
    return value


def effective_config(config: FlywheelConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    storage = data["storage"]
    storage["artifact_root"] = config.storage.resolved_artifact_root()
    storage["tracking_uri"] = tracking_uri(config.storage)
    storage["s3_endpoint_url"] = (
        config.storage.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    )
    return redact(data)


def save_effective_config(config: FlywheelConfig, store, tracker, key: str) -> None:
    """Write ``config.yaml`` as the stage ``key`` of the store and as an MLflow artifact of the round's run."""
    text = yaml.safe_dump(effective_config(config), sort_keys=False)
    with store.stage(key) as out:
        (out / layout.CONFIG_FILE).write_text(text)
    tracker.log_artifact(store.local_path(key) / layout.CONFIG_FILE)
