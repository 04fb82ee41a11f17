"""Loading a config: a YAML file (optional) and ``section.field=value`` overrides, checked at once;
a bad value or an unknown key stops with a message naming the field before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infra.settings.root import FlywheelConfig


class ConfigError(ValueError):
    """A configuration problem, with the field or file it concerns in the message."""


def invalid_config(origin: str, problems: list[str]) -> ConfigError:
    """One error listing every problem, each a "field: message" line."""
    return ConfigError("\n".join([f"invalid configuration ({origin}):", *(f"  {p}" for p in problems)]))


def _format_validation_error(err: ValidationError, origin: str) -> str:
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{field}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden" else f"{field}: {msg}")
    return str(invalid_config(origin, problems))


def config_origin(path: str | Path | None, overrides: list[str] | None) -> str:
    """Where a config came from, as error messages name it."""
    return (str(path) if path is not None else "defaults") + (" + command-line overrides" if overrides else "")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.field=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FlywheelConfig:
    data: dict[str, Any] = {}
    origin = config_origin(path, overrides)
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None
