"""What the commands' run modules share besides :mod:`nbtl.cli.common`: the data flags' values checked as data
settings. Loaded with a run module, when its command runs (it imports :mod:`nbtl.data`, and so torch), never by a
parser."""

from __future__ import annotations

import argparse
from typing import Any

from nbtl.cli.common import DATA_FLAGS
from nbtl.data.settings import check_setting


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags given on the command line, checked (one line naming the flag on a bad value), as
    :class:`~nbtl.data.settings.DataSettings` overrides; a flag not given is None."""
    return {
        key: (None if getattr(args, key, None) is None else check_setting(key, getattr(args, key), flag))
        for key, flag in DATA_FLAGS.items()
    }
