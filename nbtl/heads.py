"""The head registry: every classifier head a trial can put on a backbone's pooled features, by name, in the
spirit of timm's ``@register_model``.

A head is one builder ``build(in_features, num_classes, *, width, dropout) -> nn.Module`` registered under its name
with :func:`register_head`, saying whether it has hidden layers of ``head_width`` (so a config without them leaves
``head_width`` out). :class:`nbtl.config.TrialConfig` validation, the ``head_width`` condition, ``nbtl zoo --heads``
and :func:`nbtl.transfer.heads.make_head` all read this registry. nbtl's own heads (``linear``, ``mlp``,
``spinal``) are registered here by reference (``module:function``), so naming them never imports torch; a new head is
one file that calls :func:`register_head` with its builder, imported before a config names it (in a search, by the
code that starts it, and in each Ray worker through the module that defines it).

The learned recommender (``heuristics/recommender.json``) was fitted on nbtl's own heads: it reads a new head as
none of them (its inputs ``head_mlp``, ``head_spinal`` are 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nbtl.registry import Registry, resolve


@dataclass(frozen=True)
class HeadEntry:
    """A registered head: its name, whether ``head_width`` sizes it, and its builder (a callable, or a
    ``module:function`` reference imported when the first head is built)."""

    name: str
    has_width: bool
    builder: Callable | str
    description: str = ""

    def build(self, in_features: int, num_classes: int, width: int = 256, dropout: float = 0.0):
        """The head as an ``nn.Module``: ``(N, in_features) -> (N, num_classes)`` logits."""
        return resolve(self.builder)(in_features, num_classes, width=width, dropout=dropout)


HEADS: Registry[HeadEntry] = Registry("head", hint=" (or register one: nbtl.heads)")


def register_head(name: str, *, has_width: bool, description: str = "", builder: Callable | str | None = None):
    """Register a head named ``name``: as a decorator on its builder, or with ``builder=`` (a callable or a
    ``"module:function"`` reference).

    Examples
    --------
    >>> @register_head("cosine", has_width=False, description="cosine classifier")
    ... def cosine_head(in_features, num_classes, *, width, dropout):
    ...     return CosineClassifier(in_features, num_classes)          # doctest: +SKIP
    """

    def add(function: Callable | str) -> Callable | str:
        HEADS.add(name, HeadEntry(name, bool(has_width), function, description))
        return function

    return add(builder) if builder is not None else add


def remove_head(name: str) -> None:
    """Unregister the head ``name`` (a notebook's or a test's own); nbtl's own heads cannot be removed."""
    HEADS.remove(name)


def head_names() -> tuple[str, ...]:
    """The registered heads, in the order they were registered (nbtl's own first)."""
    return HEADS.names()


def heads_with_width() -> tuple[str, ...]:
    """The registered heads that ``head_width`` sizes (hidden layers)."""
    return tuple(entry.name for entry in HEADS.values() if entry.has_width)


def get_head(name: str) -> HeadEntry:
    """The registered head ``name``; ``ConfigError`` naming the registered ones otherwise."""
    return HEADS.get(name)


register_head("linear", has_width=False, builder="nbtl.transfer.heads:linear_head", description="dropout, linear")
register_head(
    "mlp", has_width=True, builder="nbtl.transfer.heads:mlp_head", description="one hidden ReLU layer of head_width"
)
register_head(
    "spinal",
    has_width=True,
    builder="nbtl.transfer.heads:spinal_head",
    description="SpinalNet's spinal layer: four hidden layers of head_width over alternating halves",
)
BUILT_IN = HEADS.seal()
