"""What the commands' run modules share besides :mod:`nbtl.cli.common`: the data flags' values checked as data
settings. Loaded with a run module, when its command runs (it imports :mod:`nbtl.data`, and so torch), never by a
parser."""

from __future__ import annotations

import argparse
from typing import Any

from nbtl.cli.common import DATA_FLAGS
from nbtl.data.settings import API_NAMES, check_setting
from nbtl.errors import ConfigError
from nbtl.search.units import parse_duration


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags given on the command line, checked (one line naming the flag on a bad value), by the Python
    API's names (``seed``, as the keyword arguments of :mod:`nbtl.api`); a flag not given is None."""
    values = {}
    for key, flag in DATA_FLAGS.items():
        value = getattr(args, key, None)
        values[key] = None if value is None else check_setting(API_NAMES.get(key, key), value, flag)
    return values


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags as :class:`~nbtl.data.settings.DataSettings` overrides (``--seed`` is ``split_seed``)."""
    return {API_NAMES.get(key, key): value for key, value in data_overrides(args).items()}


def time_budget(value: str | None) -> float | None:
    """``--time-budget`` in seconds (None without one); a bad duration is one line naming the flag."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ConfigError as error:
        raise ConfigError(f"--time-budget: {error}") from None
