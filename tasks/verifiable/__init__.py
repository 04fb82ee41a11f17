"""Flywheel's own verifiable instruction types, beside IFEval's: ids under ``flywheel:``.

Each type (``base.Instruction``) has a deterministic checker, the plain words a prompt states
it in, a drawer of its kwargs for one prompt, and the types it never shares a prompt with.
``layout`` holds the types about the answer's shape (lists, sections, heading, opening and
closing), ``wording`` those about its words. ``tasks/constraints.py`` dispatches ``flywheel:``
ids here; the built-in prompt generator (``tasks/prompts.py``) draws them as training types.

Usage::

    get("flywheel:last_word").check("Keep the soil moist.", word="soil")  # False
    describe(Constraint(id="flywheel:last_word", kwargs={"word": "soil"}))  # 'Make "soil" the very last word ...'
"""

from __future__ import annotations

from infra.records import Constraint
from tasks.verifiable import layout, wording  # noqa: F401  (registers the types)
from tasks.verifiable.base import INSTRUCTIONS, NAMESPACE, DrawContext, Instruction, kwargs_problem

__all__ = ["INSTRUCTIONS", "NAMESPACE", "DrawContext", "Instruction", "check", "describe", "get", "ids", "is_flywheel", "problem"]


def ids() -> list[str]:
    """Every flywheel instruction id, sorted."""
    return INSTRUCTIONS.names()


def is_flywheel(constraint_id: str) -> bool:
    return constraint_id.startswith(NAMESPACE)


def get(constraint_id: str) -> Instruction:
    return INSTRUCTIONS.get(constraint_id)


def problem(constraint: Constraint) -> str | None:
    """What is wrong with ``constraint`` (an unknown id, kwargs that do not fit), or None."""
    if constraint.id not in INSTRUCTIONS:
        return f"unknown constraint id {constraint.id!r}; flywheel types: {', '.join(ids())}"
    return kwargs_problem(get(constraint.id), constraint.kwargs)


def describe(constraint: Constraint) -> str:
    return get(constraint.id).describe(**constraint.kwargs)


def check(response: str, constraint: Constraint) -> bool:
    return bool(get(constraint.id).check(response, **constraint.kwargs))
