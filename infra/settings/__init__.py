"""Configuration as data: one pydantic model per stage, loadable from YAML.

Each section's model lives in the module named after it (``train.beta`` in ``train.py``,
``storage.tracking_uri`` in ``storage.py``); ``root.py`` puts them together as
``FlywheelConfig`` and ``loading.py`` reads it from YAML and command-line overrides.
Everything is imported from here: ``from infra.settings import TrainConfig, load_config``.

Importing this package reads nothing and creates nothing. ``load_config`` reads a
YAML file (optional) and applies ``section.field=value`` overrides; a bad value
or an unknown key stops with a message naming the field before anything runs.
"""

from infra.settings.base import Section, per_round
from infra.settings.evaluate import EvalConfig
from infra.settings.filter import FilterConfig
from infra.settings.generate import GenerateConfig, OpenAIGenerateConfig, VLLMGenerateConfig
from infra.settings.judge import JudgeConfig, OpenAIJudgeConfig
from infra.settings.loading import ConfigError, apply_overrides, config_origin, invalid_config, load_config
from infra.settings.model import BUNDLED_MODEL, ModelConfig
from infra.settings.promotion import PromotionConfig
from infra.settings.prompts import PromptsConfig
from infra.settings.ray import RayConfig, RayGenerateConfig, RayTrainConfig
from infra.settings.regression import RegressionConfig
from infra.settings.root import FlywheelConfig
from infra.settings.storage import StorageConfig
from infra.settings.train import (
    DiagnosticsConfig,
    KTOConfig,
    ORPOConfig,
    RobustConfig,
    SimPOConfig,
    TrainConfig,
)

__all__ = [
    "BUNDLED_MODEL",
    "ConfigError",
    "DiagnosticsConfig",
    "EvalConfig",
    "FilterConfig",
    "FlywheelConfig",
    "GenerateConfig",
    "JudgeConfig",
    "KTOConfig",
    "ModelConfig",
    "ORPOConfig",
    "OpenAIGenerateConfig",
    "OpenAIJudgeConfig",
    "PromotionConfig",
    "PromptsConfig",
    "RayConfig",
    "RayGenerateConfig",
    "RayTrainConfig",
    "RegressionConfig",
    "RobustConfig",
    "Section",
    "SimPOConfig",
    "StorageConfig",
    "TrainConfig",
    "VLLMGenerateConfig",
    "apply_overrides",
    "config_origin",
    "invalid_config",
    "load_config",
    "per_round",
]
