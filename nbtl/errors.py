"""Error classes raised for user-facing problems.

Every message is one line with one shape: *what* is wrong, *where* (the file, key or
parameter), and *how to fix it*. The CLI prints ``str(error)`` and exits non-zero; no
traceback is shown for these.
"""

from __future__ import annotations

import errno
import os
import shutil


def one_line(error: BaseException, with_type: bool = False) -> str:
    """``error`` as one line, at most 500 characters: an :class:`NbtlError`'s message (already what, where,
    how to fix), any other exception as ``TypeName: first line of its message``; ``with_type`` prefixes
    the type name to an NbtlError too (a failed trial's recorded reason)."""
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else ""
    if isinstance(error, NbtlError) and first and not with_type:
        return first[:500]
    return f"{type(error).__name__}: {first}".rstrip(": ")[:500]


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


class ServiceError(NbtlError):
    """A service nbtl needs (the MLflow tracking store, a Ray cluster) cannot be used as given."""


class TrackingStoreError(ServiceError):
    """The MLflow tracking URI names no usable store (no server answers, not MLflow, unknown scheme,
    a SQLite file that cannot be created)."""


class ClusterError(ServiceError):
    """The Ray cluster address names no Ray head that nbtl can join."""


class DiskFullError(Exception):
    """A full disk stopped a search; ``str()`` is the one line to show (what is full, where, how to go on).
    Not an :class:`NbtlError`: the input is fine, the machine is not (exit 1, as any full disk)."""


_FULL_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def is_disk_full_text(text: str) -> bool:
    """Whether ``text`` (a failed trial's recorded reason, an error message) says a disk is full."""
    return "[Errno 28]" in text or "[Errno 122]" in text or any(full in text for full in _FULL_TEXTS)


#: Room a search leaves on its storage disk for its own state (Ray Tune's experiment and searcher state, the
#: results table): a checkpoint or cache entry that would eat into it is refused before a byte is written, so the
#: state a full disk stops the search with is whole, and ``--resume`` continues it.
RESERVE_BYTES = 8 * 2**20


def ensure_room(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` saying how much ``what`` needs and how much is free when the disk of ``folder``
    cannot take ``needed`` bytes and still keep :data:`RESERVE_BYTES`; nothing when it can, or when ``folder``
    is not a local path (its free space unknown)."""
    try:
        free = shutil.disk_usage(folder).free
    except (OSError, ValueError):
        return
    if free < needed + RESERVE_BYTES:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: {what} needs {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free "
            f"({RESERVE_BYTES // 2**20} MiB kept for the search's state)",
            os.fspath(folder),
        )


def raise_if_disk_full(error: BaseException, path: str | os.PathLike) -> None:
    """Re-raise ``error`` (raised while writing the file ``path``) as ``OSError(ENOSPC)`` when that disk has no
    room left: ``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc]``
    or ``... file write failed``, which says nothing about space."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(os.fspath(path)))).free
    except OSError:
        return
    if free < 2**20:
        raise OSError(
            errno.ENOSPC, f"No space left on device ({free / 2**10:.0f} KiB free)", os.fspath(path)
        ) from error


def disk_full_reason(error: BaseException) -> str | None:
    """One line saying which disk is full when ``error`` or any exception it was raised from is a full disk
    (``ENOSPC``/``EDQUOT``, or SQLite's "database or disk is full", as MLflow's store reports it); else None."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return str(current).splitlines()[0]
        if (
            isinstance(current, OSError)
            and current.errno in (errno.ENOSPC, errno.EDQUOT)
            or is_disk_full_text(str(current))
        ):
            where = getattr(current, "filename", None)
            place = ""
            if where:
                folder = os.path.dirname(os.path.abspath(os.fspath(where)))
                try:
                    place = f" at {folder} ({shutil.disk_usage(folder).free / 2**20:.1f} MiB free)"
                except OSError:
                    place = f" at {folder}"
            return (
                f"the disk is full{place}: {str(current).splitlines()[0][:200]}; free space there, or point "
                "--tracking-uri, --storage-path or NBTL_CACHE_DIR at a disk with room (a search then continues "
                "with nbtl search --resume)"
            )
        stack += [current.__cause__, current.__context__]
    return None
