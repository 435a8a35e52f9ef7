"""What the driver keeps of a running search or zoo study without importing Ray (which loads only once the search
runs, after its token authentication is set): the study's session (tracker, printer, the callback Ray Tune drives)
and why a trial failed, read from Ray Tune's error text. :mod:`nbtl.search.callbacks` is the Ray side."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbtl.tracking import SearchTracker

#: The reason of a trial whose worker process died without raising (SIGKILL, the OOM killer, a segfault).
WORKER_DIED = "the trial's worker ended without a traceback (killed or out of memory)"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILURE = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)$", re.MULTILINE)


def error_reason(trial) -> str:
    """One line saying why a trial failed: its exception's type and message (e.g. ``TrialDivergedError: loss
    became nan ...``), or :data:`WORKER_DIED` when its worker died without a traceback.

    Ray Tune writes the error at once to the driver's copy of the trial folder (``trial.error_file``) and
    copies it to the storage path, which ``trial.get_error()`` reads, only at its next sync: in
    ``on_trial_error`` only the local file holds it yet."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    if not text.strip():
        text = trial.get_error() or ""
    return reason_from_error_text(str(text))


def reason_from_error_text(text: str) -> str:
    """The reason in a Ray Tune ``error.txt`` (``Failure # N (occurred at ...)`` then ``str()`` of a
    ``RayTaskError`` or ``RayActorError``, per failure): the exception line of the last failure's last
    traceback, without its module path (``nbtl.errors.ConfigError: ...`` -> ``ConfigError: ...``)."""
    failures = _FAILURE.split(_ANSI.sub("", text))
    lines = [line.rstrip() for line in failures[-1].strip().splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    if frames:  # the first unindented line after the last frame starts the exception
        after = [line for line in lines[frames[-1] + 1 :] if not line.startswith((" ", "\t"))]
        if after:
            kind, colon, message = after[0].partition(":")
            if colon and " " not in kind:
                return f"{kind.rpartition('.')[2]}:{message}"[:500]
            return after[0][:500]
    if not lines or any("actor died" in line or "worker process has died" in line for line in lines):
        return WORKER_DIED
    return lines[-1][:500]


@dataclass
class Session:
    """The driver-side objects of one running search (or zoo study): its tracker, its printer, and the callback
    Ray Tune actually drives (after ``Tuner.restore`` that is an unpickled copy, not ours)."""

    tracker: SearchTracker
    print: Callable[[str], None]
    callback: Any = None  # the SearchCallback (nbtl.search.callbacks, which imports Ray); None until it is set up
    disk_full: str | None = None  # the reason of the trial that found a disk full: the search stopped on it
    status: Callable[[str], None] | None = None  # the live status line (a terminal's), None: progress lines only


#: Running searches of this process by experiment path. Ray Tune pickles its callbacks into the
#: experiment (for ``Tuner.restore``); a restored callback finds its live tracker here instead of
#: carrying a stale MLflow client.
ACTIVE: dict[str, Session] = {}
