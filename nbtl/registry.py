"""One registry class for every vocabulary nbtl lets users extend (timm's ``@register_model`` habit): heads,
regularisers, fit measures, samplers, schedulers and start points (:data:`REGISTRIES` lists them).

A :class:`Registry` keeps its entries by name in the order they were registered (nbtl's own first), refuses a bad or
taken name, protects nbtl's own entries from removal once :meth:`Registry.seal` marks them, and says each of these in
one line of one shape. Entries may name their code as a ``"module:function"`` reference, imported on first use
(:func:`resolve`), so naming an entry never imports torch. Floor 0: it imports nothing of nbtl's but its errors.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from nbtl.errors import ConfigError

__all__ = ["REGISTRIES", "Registry", "resolve"]

Entry = TypeVar("Entry")

#: Every registry, by what it registers (filled as each module defines its own).
REGISTRIES: dict[str, Registry] = {}


def resolve(reference: Callable | str | None) -> Callable | None:
    """``reference`` itself, or the function a ``"module:function"`` string names (imported now)."""
    if isinstance(reference, str):
        module, _, attribute = reference.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return reference


class Registry(Generic[Entry]):
    """Entries of one ``kind`` (``"head"``, ``"fit measure"``, ...) by name.

    Parameters
    ----------
    kind : str
        What an entry is, as messages say it.
    error : type of Exception, default=ConfigError
        What a refused name or an unknown one raises.
    hint : str, default=""
        Appended to the message about an unknown name (e.g. where to register one).
    pattern, rule : str
        What a name must match, and how the message about one that does not says it.
    """

    def __init__(
        self,
        kind: str,
        *,
        error: type[Exception] = ConfigError,
        hint: str = "",
        pattern: str = r"[A-Za-z0-9_]+",
        rule: str = "use letters, digits and underscores",
    ) -> None:
        self.kind, self.error, self.hint = kind, error, hint
        self._pattern, self._rule = re.compile(pattern), rule
        self._entries: dict[str, Entry] = {}
        self._own: frozenset[str] = frozenset()
        REGISTRIES[kind] = self

    def check_name(self, name: Any) -> None:
        """Refuse ``name`` in one line unless it is a free, well-formed name."""
        if not isinstance(name, str) or not self._pattern.fullmatch(name):
            raise self.error(f"{self.kind} name {name!r}: {self._rule}")
        if name in self._entries:
            raise self.error(f"{self.kind} {name!r} is already registered; choose another name")

    def add(self, name: str, entry: Entry) -> Entry:
        """Register ``entry`` under ``name`` (checked by :meth:`check_name`)."""
        self.check_name(name)
        self._entries[name] = entry
        return entry

    def seal(self) -> tuple[str, ...]:
        """Mark every entry registered so far as nbtl's own (never removed); returns their names."""
        self._own = frozenset(self._entries)
        return self.names()

    def own(self) -> tuple[str, ...]:
        """nbtl's own entries' names (those registered before :meth:`seal`)."""
        return tuple(name for name in self._entries if name in self._own)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a notebook's or a test's own); nbtl's own cannot be removed."""
        if name in self._own:
            raise self.error(f"{self.kind} {name!r} is one of nbtl's own; it cannot be removed")
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry:
        """The entry ``name``; one line naming the registered ones otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; use one of {', '.join(self._entries)}{self.hint}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in the order they were registered (nbtl's own first)."""
        return tuple(self._entries)

    def values(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
