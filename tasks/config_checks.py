"""Checks of a loaded config against what exists: registered names, alarms, trl.DPOConfig keys,
the model (``infra/model_source.py``) and the prompts (``tasks/prompt_checks.py``).

``infra/settings/`` checks values and shapes but cannot see the registries, which live
here in ``tasks/``; without these checks a misspelt judge or benchmark fails only after
generation, and a misspelt blocking alarm silently turns a gate off. Likewise a hub model
that cannot download, prompts the verifier cannot score and a prompt longer than the model's
context are refused here rather than found by the stage that trips on them. Run ``check_config``
right after ``load_config``, before anything is written::

    config = load_checked_config("configs/demo.yaml", ["judge.name=verifier"])
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from infra.model_source import model_source_problem
from infra.records import Prompt
from infra.registry import Registry
from infra.settings import FlywheelConfig, config_origin, invalid_config, load_config
from tasks.constraints import known_constraints
from tasks.failure_modes import FAILURE_MODES
from tasks.judge import JUDGES
from tasks.prompt_checks import Located, constraint_problems, length_problems
from tasks.prompts import PROMPT_SOURCES, carries_unseen, load_numbered_prompts, split_counts, unseen_types
from tasks.regression import BENCHMARKS
from tasks.sampling.backends import BACKENDS
from tasks.training.diagnostics import ALARMS
from tasks.training.dpo_args import MANAGED_DPO_ARGS
from tasks.training.objectives import OBJECTIVES, FeedbackFileError, load_feedback


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
        *_unknown("train.objective", config.train.objective, OBJECTIVES),
        *_dpo_args_problems(config.train.dpo_args, config.train.objective),
        *_objective_problems(config),
        *([problem] if (problem := model_source_problem(config.model.base)) else []),
        *_prompt_problems(config),
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


def _dpo_args_problems(extras: dict, objectives: list[str] = ("dpo",)) -> list[str]:
    """Keys Flywheel manages, and keys that are not fields of the TRL config of every objective scheduled."""
    if not extras:
        return []  # trl takes seconds to import
    classes = {OBJECTIVES.get(name)().config_class() for name in objectives if name in OBJECTIVES}
    problems = []
    for key in extras:
        if key in MANAGED_DPO_ARGS:
            problems.append(f"train.dpo_args.{key}: managed by Flywheel; {MANAGED_DPO_ARGS[key]}")
            continue
        for cls in sorted(classes, key=lambda c: c.__name__):
            fields = {f.name for f in dataclasses.fields(cls)}
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                problems.append(f"train.dpo_args.{key}: not a field of trl.{cls.__name__}"
                                + (f"; did you mean {close[0]!r}?" if close else ""))
    return problems


def _objective_problems(config: FlywheelConfig) -> list[str]:
    train = config.train
    problems = []
    if "dpo_nll" in train.objective and train.nll_weight <= 0:
        problems.append("train.nll_weight: must be > 0 for objective dpo_nll (the weight of its NLL term)")
    if "kto" in train.objective:
        for path in train.kto.feedback_files:
            try:
                load_feedback(path)
            except FeedbackFileError as err:  # the message names the file and the line
                problems.append(f"train.kto.feedback_files: {err}")
    elif train.kto.feedback_files:
        problems.append("train.kto.feedback_files: only objective kto reads feedback files; train.objective has none")
    return problems


def _prompt_problems(config: FlywheelConfig) -> list[str]:
    """The prompt source read whole, as the prompts stage will: every line parses; each split
    holds enough prompts for ``n_train`` / ``n_eval`` (a round must not start, convert a model or
    open an MLflow run only to find it has nothing to train on); the judge can score them; and
    each fits the model's context (tasks/prompt_checks.py)."""
    prompts = config.prompts
    if prompts.source not in PROMPT_SOURCES:
        return []  # named above
    where = str(prompts.path) if prompts.source == "jsonl" else "the built-in prompt set"
    try:
        located = _located_prompts(config)
    except ValueError as err:  # PromptFileError names the file and the line
        message = str(err)
        return [message if message.startswith("prompts.") else f"prompts.path: {message}"]
    unseen = unseen_types(prompts)
    if prompts.source == "jsonl" and (unknown := sorted(unseen - set(known_constraints()))):
        return [f"prompts.unseen_types: unknown constraint ids {unknown}"]
    pool = [p for _, p in located if p.split == "eval" or not carries_unseen(p, unseen)]
    return [*_count_problems(config, pool, len(located) - len(pool), where),
            *constraint_problems(config, pool, where),
            *length_problems(config, located)]


def _located_prompts(config: FlywheelConfig) -> list[Located]:
    """Every prompt of the configured source with where it is: its file and line, or its id."""
    prompts = config.prompts
    if prompts.source == "jsonl" and prompts.path is not None:
        return [(f"{prompts.path}: line {n}", p) for n, p in load_numbered_prompts(prompts.path, prompts.eval_topic_share)]
    return [(f"prompt {p.id}", p) for p in PROMPT_SOURCES.get(prompts.source)(prompts)]


def _count_problems(config: FlywheelConfig, pool: list[Prompt], withheld: int, where: str) -> list[str]:
    prompts = config.prompts
    counts = split_counts(pool)
    found = (f"{where} holds {counts['train']} training and {counts['eval']} held-out prompts"
             + (f" ({withheld} training prompts left out: they carry a type in prompts.unseen_types)" if withheld else ""))
    return [f"prompts.{field}: {found}; {field}={wanted} needs at least {wanted}"
            for field, wanted, have in (("n_train", prompts.n_train, counts["train"]), ("n_eval", prompts.n_eval, counts["eval"]))
            if have < wanted]
