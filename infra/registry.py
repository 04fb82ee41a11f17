"""A small registry of pluggable parts (judges, prompt sources, benchmarks).

Modelled on lm-evaluation-harness: several names per entry, a base-class check,
an error on duplicate names, a KeyError that lists what exists, and lazy
``"module:object"`` entries so heavy backends load only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._entries: dict[str, Any] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if self.base is not None and isinstance(obj, type) and not issubclass(obj, self.base):
                raise TypeError(f"{self.kind} {obj!r} must subclass {self.base.__name__}")
            for name in names:
                self.add_lazy(name, obj)
            return obj

        return add

    def add_lazy(self, name: str, target: Any) -> None:
        """Add ``target`` (an object, or a ``"module:object"`` string loaded on first use)."""
        if name in self._entries and self._entries[name] is not target:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = target

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
