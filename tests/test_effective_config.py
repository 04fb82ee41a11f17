"""The saved config names what the environment resolved and never a credential."""

from __future__ import annotations

from infra.effective_config import effective_config, redact
from infra.settings import FlywheelConfig


def test_urls_lose_their_password_and_secret_fields_their_value():
    data = {"tracking_uri": "https://alice:s3cret@mlflow.example.com/", "nested": {"api_token": "abc", "api_key_env": "OPENAI_API_KEY"}}
    assert redact(data) == {"tracking_uri": "https://alice:***@mlflow.example.com/",
                            "nested": {"api_token": "***", "api_key_env": "OPENAI_API_KEY"}}


def test_environment_values_are_resolved_and_secrets_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ARTIFACT_ROOT", "s3://bucket/prefix")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:hunter2@127.0.0.1:5000")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    config = FlywheelConfig.model_validate({"storage": {"data_dir": str(tmp_path)}, "judge": {"name": "openai"}})
    saved = effective_config(config)
    assert saved["storage"]["artifact_root"] == "s3://bucket/prefix"
    assert saved["storage"]["tracking_uri"] == "http://bob:***@127.0.0.1:5000"
    text = repr(saved)
    assert "hunter2" not in text and "sk-do-not-leak" not in text
