"""Sizes and durations as people write them (``20G``, ``15m``), parsed once for spaces, flags and the API."""

from __future__ import annotations

import re
from typing import Any

from nbtl.errors import ConfigError

__all__ = ["parse_duration", "parse_size"]


def parse_size(value: Any, where: str = "size") -> int:
    """Bytes in a size such as ``20G``, ``500M``, ``1.5T``, ``4096`` (binary units: 1G = 2**30 bytes); must be > 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
    size = float(match[1]) * 1024 ** " kmgt".index(match[2] or " ") if match else 0
    if size < 1:
        raise ConfigError(f"{where}: expected a size such as 20G, 500M or 4096 (bytes), got {value!r}")
    return int(size)


def parse_duration(value: Any) -> float:
    """Seconds in a duration such as ``900``, ``"90s"``, ``"15m"``, ``"1.5h"``; must be > 0."""
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"a time budget must be a positive duration such as 900, 90s, 15m or 1.5h, got {value!r}")
    return seconds
