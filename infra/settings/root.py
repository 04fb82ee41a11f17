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
from infra.settings.ray import RayConfig
from infra.settings.regression import RegressionConfig
from infra.settings.storage import StorageConfig
from infra.settings.train import TrainConfig


class FlywheelConfig(Section):
    loop: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Loop name: its rounds build on each other; its artifacts, history, MLflow runs and registered "
        "model ('<loop>-policy') are grouped by it. Another name starts again from round 0.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The round-0 policy and where models run.")
    prompts: PromptsConfig = Field(
        default_factory=PromptsConfig,
        description="Where the self-play (training) and held-out (eval) prompts come from, and how many a round takes.",
    )
    generate: GenerateConfig = Field(
        default_factory=GenerateConfig,
        description="Sampling: the candidates of each training prompt, and the backend of every stage that samples.",
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig, description="Which judge compares the candidates, and the API judge's settings."
    )
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Which judged pairs are kept for training.")
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Preference training: the objective, its schedules, LoRA, and the training alarms' thresholds.",
    )
    evaluate: EvalConfig = Field(
        default_factory=EvalConfig,
        description="The pairwise eval of the trained challenger against the champion on the held-out prompts.",
    )
    regression: RegressionConfig = Field(
        default_factory=RegressionConfig, description="The capability benchmarks that guard against forgetting."
    )
    promotion: PromotionConfig = Field(
        default_factory=PromotionConfig, description="The gate a challenger must pass to become the champion."
    )
    ray: RayConfig = Field(
        default_factory=RayConfig,
        description="The Ray cluster that train.engine 'ray' and generate.backend 'ray' run on (ray.address or RAY_ADDRESS).",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="The artifact store, MLflow tracking and the model registry, and the loop's hold.",
    )
