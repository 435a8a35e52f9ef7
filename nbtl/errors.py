"""Error classes raised for user-facing problems.

Every message is one line with one shape: *what* is wrong, *where* (the file, key or
parameter), and *how to fix it*. The CLI prints ``str(error)`` and exits non-zero; no
traceback is shown for these.
"""

from __future__ import annotations


class NbtlError(Exception):
    """Base class of every error nbtl raises on purpose."""


class DataError(NbtlError):
    """A dataset cannot be read or split as asked (missing path, corrupt image, too few images)."""


class BackboneError(NbtlError):
    """A backbone is unknown, or its weights cannot be found or do not fit."""


class ConfigError(NbtlError):
    """A trial config or search space is invalid (unknown key, bad range, bad value)."""


class TrialDivergedError(NbtlError):
    """Training produced a non-finite loss; the trial is recorded as failed with this reason."""
