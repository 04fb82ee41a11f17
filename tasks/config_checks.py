"""Checks of a loaded config against what exists: registered names, alarms, trl.DPOConfig keys.

``infra/settings.py`` checks values and shapes but cannot see the registries, which live
here in ``tasks/``; without these checks a misspelt judge or benchmark fails only after
generation, and a misspelt blocking alarm silently turns a gate off. Run ``check_config``
right after ``load_config``, before anything is written::

    config = load_checked_config("configs/demo.yaml", ["judge.name=verifier"])
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from infra.registry import Registry
from infra.settings import MANAGED_DPO_ARGS, FlywheelConfig, config_origin, invalid_config, load_config
from tasks.backends import BACKENDS
from tasks.diagnostics import ALARMS
from tasks.failure_modes import FAILURE_MODES
from tasks.judge import JUDGES
from tasks.prompts import PROMPT_SOURCES, load_prompt_file
from tasks.regression import BENCHMARKS


def check_config(config: FlywheelConfig, origin: str = "checked config") -> FlywheelConfig:
    """``config`` itself when every name in it exists; else a ConfigError listing each problem as "field: message"."""
    problems = [
        *_unknown("judge.name", [config.judge.name], JUDGES),
        *_unknown("judge.compare_with", config.judge.compare_with, JUDGES),
        *_unknown("evaluate.judge", [config.evaluate.judge] if config.evaluate.judge else [], JUDGES),
        *_unknown("regression.tasks", config.regression.tasks, BENCHMARKS),
        *_unknown("regression.per_task_tolerance", list(config.regression.per_task_tolerance), BENCHMARKS),
        *_unknown("prompts.source", [config.prompts.source], PROMPT_SOURCES),
        *_unknown("generate.backend", [config.generate.backend], BACKENDS),
        *(f"promotion.blocking_alarms: unknown alarm {name!r}; known: {', '.join(ALARMS)}"
          for name in config.promotion.blocking_alarms if name not in ALARMS),
        *(f"judge.failure_penalties: unknown failure mode {name!r}; known: {', '.join(FAILURE_MODES)}"
          for name in config.judge.failure_penalties if name not in FAILURE_MODES),
        *_dpo_args_problems(config.train.dpo_args),
        *_prompt_file_problems(config),
    ]
    if problems:
        raise invalid_config(origin, problems)
    return config


def load_checked_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FlywheelConfig:
    """``load_config`` then ``check_config``: a config every stage can run."""
    return check_config(load_config(path, overrides), config_origin(path, overrides))


def _unknown(field: str, names: list[str], registry: Registry) -> list[str]:
    # Membership only: resolving a lazy entry would import its backend.
    known = ", ".join(registry.names())
    return [f"{field}: unknown {registry.kind} {name!r}; known: {known}" for name in names if name not in registry]


def _dpo_args_problems(extras: dict) -> list[str]:
    if not extras:
        return []  # trl takes seconds to import
    from trl import DPOConfig

    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    problems = []
    for key in extras:
        if key in MANAGED_DPO_ARGS:
            problems.append(f"train.dpo_args.{key}: managed by Flywheel; {MANAGED_DPO_ARGS[key]}")
        elif key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            problems.append(f"train.dpo_args.{key}: not a field of trl.DPOConfig" + (f"; did you mean {close[0]!r}?" if close else ""))
    return problems


def _prompt_file_problems(config: FlywheelConfig) -> list[str]:
    if config.prompts.source != "jsonl" or config.prompts.path is None:
        return []
    try:
        load_prompt_file(config.prompts.path, config.prompts.eval_topic_share)
    except ValueError as err:  # PromptFileError: the message names the file and the line
        return [f"prompts.path: {err}"]
    return []
