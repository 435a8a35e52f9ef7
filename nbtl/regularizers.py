"""The regulariser registry: every way a trial is held back from over-fitting, by name, with its knobs, in the
spirit of timm's ``@register_model`` (and of :mod:`nbtl.heads` and :mod:`nbtl.fit.registry`).

A regulariser is registered with :func:`register_regularizer`: its knobs (each a :class:`Knob`: the trial-config key,
its default, its bounds, the value that switches it off, and how the learned recommender reads it) and, where it adds a
term to the loss, the builder of that term, ``penalty(weights, config) -> nn.Module | None`` (:class:`PenaltyWeights`
says which weights are transferred, re-initialised or the head's). Everything that names regularisation reads this
registry, so a new regulariser is one file:

- :class:`nbtl.config.TrialConfig` accepts, validates and writes every knob (a knob that is not one of its own fields
  lives in ``TrialConfig.extra`` and reads as an attribute);
- :func:`nbtl.transfer.build_transfer` adds every registered penalty to the trial's loss (``setup.regularizer``);
- the linear probe (:func:`nbtl.heuristics.recipes.probe_config`) switches every regulariser off with
  :func:`off_values`, without a list of its own;
- a newly fitted learned recommender (``nbtl heuristics learn``) reads every knob that declares a ``learned_input``
  (:func:`learned_knobs`).

nbtl's own: ``l2sp`` (L2-SP + L2, Li et al. 2018 and Plested et al. 2021: ``l2sp_alpha``, ``l2_beta``,
``l2_head``, ``l2sp_blocks``), ``head_dropout`` (in the head) and ``label_smoothing`` (in the loss). Their
penalty builders are named by reference (``module:function``), so naming them never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbtl.codec import is_unset
from nbtl.errors import ConfigError
from nbtl.registry import Registry, resolve

__all__ = [
    "BUILT_IN",
    "Knob",
    "PenaltyWeights",
    "RegularizerEntry",
    "get_regularizer",
    "knob",
    "knobs",
    "learned_knobs",
    "off_values",
    "register_regularizer",
    "regularizer_names",
    "remove_regularizer",
]


@dataclass(frozen=True)
class Knob:
    """One trial-config key of a regulariser.

    ``default`` is the config's default; ``kind`` ``float`` or ``int``; a value must lie in ``[low, high]``
    (``high`` None: no upper bound); ``optional``: None is a value too (what it means is the regulariser's).
    ``off`` is the value that switches the regulariser off (what the linear probe uses), or None for a knob that
    shapes the regulariser without switching it (``l2sp_blocks``). ``learned_input`` names the learned
    recommender's input and ``encode`` computes it from the knob's value (``fallback``: the knob whose value a None
    stands for, e.g. ``l2_head`` None means ``l2_beta``'s)."""

    name: str
    default: Any
    kind: str = "float"
    low: float = 0.0
    high: float | None = None
    optional: bool = False
    off: Any = None
    learned_input: str | None = None
    encode: Callable[[float], float] | None = None
    fallback: str | None = None

    def check(self, value: Any, where: str) -> None:
        """Raise ``ConfigError`` (one line: the key, the bound, the value) unless ``value`` is allowed."""
        if value is None and self.optional:
            return
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
                raise ConfigError(f"{where}: {self.name} must be an integer >= {int(self.low)}, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {self.name} must be a finite number, got {value!r}")
        if value < self.low or (self.high is not None and value > self.high):
            bound = f">= {self.low}" + (f" and <= {self.high}" if self.high is not None else "")
            raise ConfigError(f"{where}: {self.name} must be {bound}, got {value!r}")

    def parse(self, value: Any) -> Any:
        """``value`` as the knob's kind: MLflow params and CSV cells come back as text (``"0.01"``, ``"None"``)."""
        if not isinstance(value, str):
            return value
        if is_unset(value):
            return None if self.optional else value  # check() names a None the knob does not take
        try:
            return int(value) if self.kind == "int" else float(value)
        except ValueError:
            return value  # check() names it


@dataclass(frozen=True)
class PenaltyWeights:
    """The weights a penalty may act on (kernels only: ``ndim > 1`` and still training; biases and normalisation
    parameters are never regularised). ``anchored``: transferred weights below ``l2sp_blocks``; ``unanchored``:
    transferred weights from there on; ``new``: re-initialised blocks' and the head's; ``head``: the head's alone."""

    anchored: list = field(default_factory=list)
    unanchored: list = field(default_factory=list)
    new: list = field(default_factory=list)
    head: list = field(default_factory=list)


@dataclass(frozen=True)
class RegularizerEntry:
    """A registered regulariser: its knobs and, where it adds a term to the loss, its penalty builder (a callable,
    or a ``module:function`` reference imported when the first trial builds it)."""

    name: str
    knobs: tuple[Knob, ...]
    penalty: Callable | str | None = None
    description: str = ""

    def build_penalty(self, weights: PenaltyWeights, config) -> Any:
        """The term this regulariser adds to the loss for ``config`` (an ``nn.Module`` called with no arguments,
        returning a scalar), or None when it adds none (it acts elsewhere, or is off)."""
        if self.penalty is None:
            return None
        return resolve(self.penalty)(weights, config)


REGULARIZERS: Registry[RegularizerEntry] = Registry("regulariser", hint=" (or register one: nbtl.regularizers)")


def register_regularizer(
    name: str, *, knobs: list[Knob] | tuple[Knob, ...], penalty: Callable | str | None = None, description: str = ""
) -> RegularizerEntry:
    """Register the regulariser ``name`` with its ``knobs`` and ``penalty`` builder
    (``penalty(weights: PenaltyWeights, config: TrialConfig) -> nn.Module | None``).

    Examples
    --------
    >>> register_regularizer(
    ...     "l1_head",
    ...     knobs=[Knob("l1_head", default=0.0, off=0.0, learned_input="log_l1_head",
    ...                 encode=lambda v: math.log10(v + 1e-6))],
    ...     penalty=l1_head_penalty,
    ... )                                                               # doctest: +SKIP
    """
    REGULARIZERS.check_name(name)
    taken = {k.name: entry.name for entry in REGULARIZERS.values() for k in entry.knobs}
    for item in knobs:
        if not isinstance(item, Knob):
            raise ConfigError(f"regulariser {name!r}: each knob must be an nbtl.regularizers.Knob, got {item!r}")
        if item.name in taken:
            raise ConfigError(f"regulariser {name!r}: knob {item.name!r} already belongs to {taken[item.name]!r}")
        item.check(item.default, f"regulariser {name!r}'s default")
        if item.off is not None:
            item.check(item.off, f"regulariser {name!r}'s off value")
    return REGULARIZERS.add(name, RegularizerEntry(name, tuple(knobs), penalty, description))


def remove_regularizer(name: str) -> None:
    """Unregister the regulariser ``name`` (a notebook's or a test's own); nbtl's own cannot be removed."""
    REGULARIZERS.remove(name)


def regularizer_names() -> tuple[str, ...]:
    """The registered regularisers, in the order they were registered (nbtl's own first)."""
    return REGULARIZERS.names()


def get_regularizer(name: str) -> RegularizerEntry:
    """The registered regulariser ``name``; ``ConfigError`` naming the registered ones otherwise."""
    return REGULARIZERS.get(name)


def knobs() -> dict[str, Knob]:
    """Every registered regulariser's knobs, by config key."""
    return {k.name: k for entry in REGULARIZERS.values() for k in entry.knobs}


def knob(name: str) -> Knob | None:
    return knobs().get(name)


def off_values() -> dict[str, Any]:
    """The value of every knob that switches a regulariser off: what the linear probe sets."""
    return {k.name: k.off for k in knobs().values() if k.off is not None}


def learned_knobs() -> tuple[Knob, ...]:
    """The knobs the learned recommender reads (each names its ``learned_input``), in registration order."""
    return tuple(k for k in knobs().values() if k.learned_input)


register_regularizer(
    "l2sp",
    knobs=[
        Knob("l2sp_alpha", 0.0, off=0.0, learned_input="log_l2sp_alpha", encode=lambda v: math.log10(v + 1e-4)),
        Knob("l2_beta", 0.0, off=0.0, learned_input="log_l2_beta", encode=lambda v: math.log10(v + 1e-6)),
        Knob(
            "l2_head",
            None,
            optional=True,
            off=0.0,
            learned_input="log_l2_head",
            encode=lambda v: math.log10(v + 1e-5),
            fallback="l2_beta",
        ),
        Knob("l2sp_blocks", None, kind="int", optional=True),
    ],
    penalty="nbtl.transfer.regularizer:l2sp_penalty",
    description="L2-SP towards the pre-trained weights below l2sp_blocks, L2 towards zero (Li et al. 2018, "
    "Plested et al. 2021)",
)
register_regularizer(
    "head_dropout",
    knobs=[Knob("head_dropout", 0.0, high=0.95, off=0.0, learned_input="head_dropout", encode=float)],
    description="dropout before the head's layers (in the head)",
)
register_regularizer(
    "label_smoothing",
    knobs=[Knob("label_smoothing", 0.0, high=0.5, off=0.0)],
    description="cross-entropy label smoothing (in the loss)",
)
BUILT_IN = REGULARIZERS.seal()
