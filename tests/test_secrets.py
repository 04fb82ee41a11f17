"""API keys of the clients that call a model over HTTP: where they come from, and the error when one is missing."""

from __future__ import annotations

import pytest

from infra.secrets import NO_KEY, MissingSecretError, api_key
from infra.settings import OpenAIGenerateConfig, OpenAIJudgeConfig


@pytest.mark.parametrize("settings", [OpenAIJudgeConfig, OpenAIGenerateConfig])
def test_the_key_comes_from_the_environment_variable_the_config_names(settings, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_TEST_KEY", "sk-from-env")
    assert api_key(settings(api_key_env="FLYWHEEL_TEST_KEY")) == "sk-from-env"


def test_a_local_server_needs_no_key(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_TEST_KEY", raising=False)
    assert api_key(OpenAIJudgeConfig(base_url="http://127.0.0.1:8000/v1", api_key_env="FLYWHEEL_TEST_KEY")) == NO_KEY
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")  # the openai client's own setting
    assert api_key(OpenAIJudgeConfig(api_key_env="FLYWHEEL_TEST_KEY")) == NO_KEY


def test_a_missing_key_for_openai_names_the_variable(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_TEST_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(MissingSecretError, match="FLYWHEEL_TEST_KEY.*api_key_env"):
        api_key(OpenAIGenerateConfig(api_key_env="FLYWHEEL_TEST_KEY"))
