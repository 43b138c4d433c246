"""One small registry for every kind of named thing (models, engines, parsers, encoders): a dict
whose unknown name is a ``LookupError`` that lists the known ones. Imports nothing of the project,
so any layer may use it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name → item for one ``kind`` ("model", "engine" …), with optional aliases."""

    def __init__(self, kind: str, items: Mapping[str, T] | Iterable[tuple[str, T]] = (), aliases=None):
        super().__init__(items)
        self.kind = kind
        self.aliases: dict[str, str] = dict(aliases or {})

    def __missing__(self, name: str) -> T:
        raise LookupError(f"unknown {self.kind} {name!r}: known {self.kind}s: {', '.join(self)}")

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def lookup(self, name: str) -> T:
        """The item of a name or alias (``LookupError`` listing the known names otherwise)."""
        return self[self.canonical(name)]

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: ``@ENGINES.register("mine")``."""

        def add(item: T) -> T:
            self[name] = item
            return item

        return add
