"""What a verifiable instruction type is, the registry of them, and the text pieces their checks share.

An ``Instruction`` bundles one type's four parts: a deterministic ``check`` of a response, the
plain-words ``describe`` a prompt states it with, a ``draw`` of its kwargs for one prompt, and the
``conflicts``: types (of any namespace, IFEval's included) it never shares a prompt with, because
they contradict it or fight over the same part of the answer. Kwargs are plain JSON values,
checked against ``kwargs`` (name -> type) and ``valid`` before a prompt may carry them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from infra.registry import Registry

NAMESPACE = "flywheel:"


@dataclass(frozen=True)
class DrawContext:
    """What a kwargs drawer may use: the topic's words to require, its subject, and words the prompt already forbids."""

    keywords: tuple[str, ...]
    subject: str = ""
    forbidden: frozenset[str] = frozenset()

    def usable(self, options: Collection[str]) -> list[str]:
        """``options`` that contain no forbidden word (all of them when none is left)."""
        fine = [o for o in options if not self.forbidden & set(words(o.lower()))]
        return fine or list(options)


@dataclass(frozen=True)
class Instruction:
    id: str
    check: Callable[..., bool]  # check(response, **kwargs)
    describe: Callable[..., str]  # describe(**kwargs)
    draw: Callable[[random.Random, DrawContext], dict[str, Any]]
    kwargs: dict[str, type] = field(default_factory=dict)
    valid: Callable[..., str | None] = lambda **_: None  # a problem with the kwargs' values, or None
    conflicts: frozenset[str] = frozenset()
    weight: float = 1.5  # how often the built-in generator draws it, beside IFEval's weights


INSTRUCTIONS: Registry[Instruction] = Registry("verifiable instruction")


def instruction(**fields: Any) -> Instruction:
    """Build an ``Instruction`` and register it under its id."""
    fields["conflicts"] = frozenset(fields.get("conflicts", ()))
    built = Instruction(**fields)
    if not built.id.startswith(NAMESPACE):
        raise ValueError(f"instruction id {built.id!r} must start with {NAMESPACE!r}")
    INSTRUCTIONS.register(built.id)(built)
    return built


# --- text pieces the checks share -----------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Markdown and quoting that may open a line without being part of its words.
_LINE_OPENER = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[*+-]\s+|\d+[.)]\s+|[\"'“‘(*_]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``: runs of letters and digits, apostrophes inside a word kept."""
    return _WORD.findall(text)


def lines(text: str) -> list[str]:
    """Non-blank lines, right-stripped."""
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def paragraphs(text: str) -> list[str]:
    """Blocks separated by one or more blank lines."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def sentences(text: str) -> list[str]:
    """Sentences: split after . ! or ? followed by a space, and at every line break."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p.strip() for p in parts if words(p)]


def without_opener(line: str) -> str:
    """``line`` without leading markdown (heading marks, bullets, numbers, quotes, emphasis)."""
    return _LINE_OPENER.sub("", line, count=1)


def closing_text(text: str) -> str:
    """``text`` without trailing whitespace, closing quotes, brackets or emphasis marks."""
    return text.rstrip().rstrip("\"'”’)*_ \t\n")


def kwargs_problem(inst: Instruction, kwargs: dict[str, Any]) -> str | None:
    """What is wrong with ``kwargs`` for ``inst``, or None."""
    missing = sorted(set(inst.kwargs) - set(kwargs))
    extra = sorted(set(kwargs) - set(inst.kwargs))
    if missing or extra:
        return f"needs kwargs {sorted(inst.kwargs)}" + (f"; missing {missing}" if missing else "") + (
            f"; unknown {extra}" if extra else "")
    for name, kind in inst.kwargs.items():
        value = kwargs[name]
        if kind is list:
            ok = isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool) and (kind is not str or value.strip())
        if not ok:
            return f"kwarg {name!r} must be a {'non-empty list of words' if kind is list else kind.__name__}, got {value!r}"
    return inst.valid(**kwargs)
