"""The whole configuration: one section per stage, plus the loop's name."""

from __future__ import annotations

from pydantic import Field

from infra.settings.base import Section
from infra.settings.evaluate import EvalConfig
from infra.settings.filter import FilterConfig
from infra.settings.generate import GenerateConfig
from infra.settings.judge import JudgeConfig
from infra.settings.model import ModelConfig
from infra.settings.promotion import PromotionConfig
from infra.settings.prompts import PromptsConfig
from infra.settings.regression import RegressionConfig
from infra.settings.storage import StorageConfig
from infra.settings.train import TrainConfig


class FlywheelConfig(Section):
    loop: str = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]+$",
        description="Loop name: its rounds build on each other; its artifacts, history, MLflow runs and registered "
        "model ('<loop>-policy') are grouped by it. Another name starts again from round 0.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="Self-play prompts.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="generate-candidates stage.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="judge stage.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="filter stage.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="train stage.")
    evaluate: EvalConfig = Field(default_factory=EvalConfig, description="pairwise-eval stage.")
    regression: RegressionConfig = Field(default_factory=RegressionConfig, description="capability-regression stage.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="promotion gate.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Artifact store and tracking.")
