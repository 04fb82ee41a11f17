import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from infra import settings
from infra.settings import ConfigError, FlywheelConfig, load_config, per_round


def _sections(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _sections(annotation)


def test_every_field_has_a_description():
    missing = [
        f"{model.__name__}.{name}"
        for model in _sections(FlywheelConfig)
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert missing == []


def test_defaults_load_and_overrides_apply():
    config = load_config(None, ["train.epochs=1", "generate.temperatures=[0.5, 0.9]", "loop=exp1"])
    assert config.train.epochs == 1
    assert config.generate.temperatures == [0.5, 0.9]
    assert config.loop == "exp1"


def test_yaml_file_loads(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("loop: yaml-loop\nfilter:\n  similarity_threshold: 0.8\n")
    config = load_config(path)
    assert config.loop == "yaml-loop" and config.filter.similarity_threshold == 0.8


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.epochs=-1"], "train.epochs"),
        (["filter.similarity_threshold=1.5"], "filter.similarity_threshold"),
        (["generate.n_candidates=1"], "generate.n_candidates"),
        (["train.bogus=3"], "train.bogus: unknown key"),
        (["generate.temperatures=[0.7, 0]"], "temperatures"),
        (["prompts.source=jsonl"], "prompts.path"),
        (["train.min_pairs=0"], "train.min_pairs"),
        (["train.diagnostics.reward_accuracy_band=[0.9, 0.5]"], "train.diagnostics.reward_accuracy_band"),
        (["train.diagnostics.reward_accuracy_band=[0.5, 1.2]"], "train.diagnostics.reward_accuracy_band"),
        (["train.diagnostics.reward_accuracy_band=[0.5]"], "train.diagnostics.reward_accuracy_band"),
        (["notakey"], "expected section.field=value"),
    ],
)
def test_bad_values_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert fragment in str(err.value)


def test_bad_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_schedule_repeats_last_value():
    assert [per_round([0.1, 0.2], i) for i in (1, 2, 3, 4)] == [0.1, 0.2, 0.2, 0.2]


def test_import_has_no_side_effects(tmp_path):
    # A fresh interpreter: reloading the module here would leave other tests holding stale classes.
    import subprocess
    import sys

    root = Path(settings.__file__).parents[2]  # infra/settings/__init__.py
    subprocess.run([sys.executable, "-c", "import infra.settings"], cwd=tmp_path, check=True,
                   env={**os.environ, "PYTHONPATH": str(root)})
    assert list(tmp_path.iterdir()) == []


def test_a_dumped_config_loads_back_as_it_was():
    # Rounds send their config to training workers as Prefect parameters, which are JSON dumps.
    config = load_config(None, ["train.objective=[dpo, orpo]", "train.orpo.weight=0.2"])
    assert FlywheelConfig.model_validate(config.model_dump(mode="json")) == config
