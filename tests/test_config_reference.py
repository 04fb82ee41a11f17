"""The configuration reference is read from the pydantic models: `flywheel config --describe`
lists every field, and docs/configuration.md is exactly what the models say today."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from flows.cli import main
from infra.settings import FlywheelConfig
from infra.settings.reference import REGENERATE, config_sections, reference_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field's dotted path, walked here apart from the module under test."""
    paths = []
    for name, info in model.model_fields.items():
        nested = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        paths += _leaves(info.annotation, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return paths


def test_describe_lists_every_leaf_field(capsys):
    assert main(["config", "--describe"]) == 0
    described = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert sorted(described) == sorted(_leaves(FlywheelConfig))  # each once; a section's own fields before its subsections'
    assert len(described) > 100 and "train.diagnostics.reward_accuracy_band" in described


def test_describe_gives_type_default_and_range(capsys):
    assert main(["config", "--describe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "train.lora_dropout: float = 0.05  (>= 0, < 1)" in lines
    assert "model.dtype: str = \"auto\"  (one of 'auto', 'bf16', 'fp32')" in lines
    assert "train.micro_batch_size: int | 'auto' | null = \"auto\"" in lines
    assert "judge.failure_penalties: dict[str, float] = {}  (each value >= 0)" in lines
    assert "generate.temperatures: list[float] = [0.6, 0.8, 1.0]  (at least 1 item)" in lines


def test_markdown_lists_every_leaf_field(capsys):
    assert main(["config", "--describe", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert all(f"- **`{path}`** (" in text for path in _leaves(FlywheelConfig))


def test_every_field_says_more_than_a_few_words():
    short = [f"{f.path}: {f.description!r}" for s in config_sections() for f in s.fields if len(f.description) < 40]
    assert short == [], "give these fields' descriptions units, range and interactions"


def test_docs_configuration_is_current():
    assert DOCS.exists(), f"docs/configuration.md is missing: run {REGENERATE}"
    assert DOCS.read_text() == reference_markdown(), f"docs/configuration.md is stale: run {REGENERATE}"
