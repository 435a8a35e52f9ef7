"""One entry of a search space's ``parameters`` (:class:`Parameter`) and the rules for its block bounds, shared
by :mod:`nbtl.search.space` (which parses and samples spaces) and :mod:`nbtl.search.space_checks` (which checks
them across parameters): both import this module, neither imports the other at load time."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from nbtl.backbones import get_spec
from nbtl.config import TrialConfig
from nbtl.regularizers import knob

#: The parameters that count blocks of a backbone (bounds may be ``'all'``, ``'all-N'`` or an earlier one's name).
BLOCK_KEYS = ("transfer_blocks", "freeze_blocks", "l2sp_blocks")

__all__ = ["BLOCK_KEYS", "Parameter", "field_kind", "resolve_bound", "valid_all_minus"]


def resolve_bound(bound: Any, chosen: dict[str, Any], num_blocks: int) -> Any:
    """A block bound: a number, ``'all'``, ``'all-N'`` (the backbone's block count minus N, at least 0),
    or an earlier block parameter's value (all blocks when unset)."""
    if not isinstance(bound, str):
        return bound
    if bound == "all":
        return num_blocks
    if bound.startswith("all-"):
        return max(0, num_blocks - int(bound[4:]))
    resolved = chosen.get(bound)
    return num_blocks if resolved is None else resolved


def valid_all_minus(bound: str) -> bool:
    return bound.startswith("all-") and bound[4:].isdigit()


def field_kind(key: str) -> str:
    """'int', 'float', 'bool', 'str' or 'list' for a TrialConfig key (a registered regulariser's knob: its kind)."""
    hints = typing.get_type_hints(TrialConfig)
    if key not in hints and (found := knob(key)) is not None:
        return found.kind
    hint = hints[key]
    for kind, typ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if hint is typ or typ in typing.get_args(hint):
            return kind
    return "list"


@dataclass
class Parameter:
    """One entry of ``parameters``: fixed ``value``, categorical ``choices``, or a ``low``/``high`` range."""

    name: str
    value: Any = None
    choices: list[Any] | None = None
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    when: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether this parameter's ``when`` holds for the values ``chosen`` so far (unset keys: the
        :class:`~nbtl.config.TrialConfig` default)."""
        return all(chosen.get(k, TrialConfig.default(k, None)) in v for k, v in self.when.items())

    def bounds(self, chosen: dict[str, Any]) -> tuple[Any, Any]:
        """``(low, high)`` of a range parameter given the values ``chosen`` so far: ``'all'`` and block
        parameters resolved, and a block range capped to what the trial can take (``transfer_blocks <=``
        the backbone's block count, ``freeze_blocks <= transfer_blocks``, 0 when ``pretrained`` is false)."""
        num_blocks = get_spec(chosen.get("backbone", TrialConfig.default("backbone"))).num_blocks

        low, high = resolve_bound(self.low, chosen, num_blocks), resolve_bound(self.high, chosen, num_blocks)
        if self.name in BLOCK_KEYS:
            cap = num_blocks
            if self.name in ("freeze_blocks", "l2sp_blocks"):
                transfer = chosen.get("transfer_blocks")
                cap = min(cap, num_blocks if transfer is None else transfer)
                if not chosen.get("pretrained", TrialConfig.default("pretrained")) and self.name == "freeze_blocks":
                    cap = 0
            high = min(high, cap)
            low = min(low, high)
        return low, high

    def candidates(self) -> list[Any]:
        """The literal values this parameter may take that can be checked in isolation."""
        if self.fixed:
            return [self.value]
        if self.choices is not None:
            return list(self.choices)
        return [b for b in (self.low, self.high) if not isinstance(b, str)]
