"""API keys for the clients that call a model over HTTP (the openai judge, the openai generation backend).

A config names where its key is (``api_key_block``: a Prefect Secret block, used when set;
``api_key_env``: an environment variable) and ``api_key`` reads it there. A local server
(``base_url`` set, or ``OPENAI_BASE_URL``) needs no key, but the openai client insists on one, so
it gets a placeholder; OpenAI itself does, and a key that is missing stops the call with an error naming
where it was looked for. The key itself is never logged nor put in a message.
"""

from __future__ import annotations

import os
from typing import Protocol

NO_KEY = "not-needed"  # what a local server is sent: the openai client refuses an empty key


class KeyedClientConfig(Protocol):
    """What ``api_key`` reads of a config (``OpenAIJudgeConfig``, ``OpenAIGenerateConfig``)."""

    base_url: str | None
    api_key_env: str
    api_key_block: str | None


class MissingSecretError(RuntimeError):
    """The API key is not where the config says it is; the message names the place, never a key."""


def api_key(config: KeyedClientConfig) -> str:
    """The API key ``config`` names: from its Prefect Secret block when set, else its environment variable."""
    if config.api_key_block:
        return _from_block(config.api_key_block)
    key = os.environ.get(config.api_key_env)
    if key:
        return key
    # The openai client takes its server from OPENAI_BASE_URL when the config names none.
    if not (config.base_url or os.environ.get("OPENAI_BASE_URL")):
        raise MissingSecretError(f"the OpenAI API needs a key, and the environment variable {config.api_key_env} (api_key_env) "
                                 "is not set: set it, name a Prefect Secret block in api_key_block, or point base_url at a "
                                 "local server")
    return NO_KEY


def _from_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise MissingSecretError(f"the Prefect Secret block {name!r} (api_key_block) could not be loaded: {exc}") from exc
