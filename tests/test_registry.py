"""The one registry class (:mod:`nbtl.registry`), tested on every registry nbtl has (timm's habit of looping over
every registered family): each names its entries, says an unknown or a taken name in one line of one shape, keeps
nbtl's own, and takes and drops one of a user's."""

from __future__ import annotations

import pytest

import nbtl.fit.registry
import nbtl.heads
import nbtl.regularizers
import nbtl.search.algorithms
import nbtl.search.settings  # noqa: F401  (each module registers its own vocabulary on import)
from nbtl.registry import REGISTRIES, Registry, resolve

KINDS = {"head", "regulariser", "fit measure", "sampler", "scheduler", "start point"}


def test_every_vocabulary_has_a_registry():
    assert set(REGISTRIES) >= KINDS
    assert all(isinstance(registry, Registry) for registry in REGISTRIES.values())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_registry_names_its_entries_refuses_bad_names_and_keeps_its_own(kind):
    registry = REGISTRIES[kind]
    names = registry.names()
    assert names and registry.own() == names[: len(registry.own())] and registry.own()  # nbtl's own come first
    for name in names:
        entry = registry.get(name)
        assert getattr(entry, "name", name) == name and name in registry
    with pytest.raises(registry.error) as unknown:
        registry.get("no_such_entry")
    message = str(unknown.value)
    assert message.startswith(f"unknown {kind} 'no_such_entry'; use one of ") and "\n" not in message
    assert all(name in message for name in names)
    with pytest.raises(registry.error, match="is already registered; choose another name"):
        registry.check_name(names[0])
    with pytest.raises(registry.error, match=f"^{kind} name 'two words': "):
        registry.check_name("two words")
    for name in registry.own():
        with pytest.raises(registry.error, match="is one of nbtl's own; it cannot be removed"):
            registry.remove(name)
    # a user's entry is taken and dropped again, nbtl's own stay
    registry.add("users_own", registry.get(names[0]))
    try:
        assert registry.names() == (*names, "users_own") and registry.get("users_own") is registry.get(names[0])
    finally:
        registry.remove("users_own")
    assert registry.names() == names


def test_references_resolve_to_the_function_they_name():
    assert resolve("nbtl.heads:get_head") is nbtl.heads.get_head
    assert resolve(len) is len and resolve(None) is None
