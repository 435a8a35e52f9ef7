"""The embedded Ray dies with its driver.

Ray shares the fate of its driver for the processes the driver starts itself (GCS, raylet, monitors), but the
raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive a SIGKILLed driver, listening on
loopback ports. :func:`embedded_ray_reaper` marks the processes the driver starts for the embedded Ray with an
environment variable and starts a small watcher process holding the read end of a pipe whose write end only the
driver holds. The watcher keeps a list of the marked processes and their descendants (the agents, the workers).
When the driver ends, however it ends, the pipe closes and the watcher ends every process on its list (one that
reused a pid is spared: start times are compared), then exits. A user's ``ray start`` cluster never carries it.

Run as ``python -I .../nbtl/search/reaper.py MARK`` by :func:`embedded_ray_reaper` only: a script of the standard
library alone, not ``-m nbtl.search.reaper``, which imports the ``nbtl.search`` package and with it torch (3 s of a
CPU at every search's start, measured here).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

#: The environment variable that marks the processes of one embedded Ray: ``<driver pid>-<random hex>``.
OWNER_ENV = "NBTL_EMBEDDED_RAY"


def _processes(proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (parent pid, start time in clock ticks since boot)."""
    table = {}
    for entry in proc.glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _marked(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return False


def family(mark: str) -> dict[int, str]:
    """The processes of the embedded Ray marked ``mark`` and all their descendants: pid -> start time.

    Ray's agents blank their environment when they set their process title, so they are found as
    children of the (marked) raylet."""
    needle = f"{OWNER_ENV}={mark}".encode()
    table = _processes()
    driver = int(mark.split("-", 1)[0])  # never the driver (nor, through it, its other children)
    found = {pid for pid in table if pid not in (os.getpid(), driver) and _marked(pid, needle)}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in found and pid not in found}
        found |= children
        grew = bool(children)
    return {pid: table[pid][1] for pid in found}


def reap(known: dict[int, str], mark: str, grace_s: float = 3.0) -> list[int]:
    """End the processes in ``known`` (pid -> start time, a process reusing the pid is spared) and any still
    marked ``mark``: SIGTERM, then SIGKILL for those alive after ``grace_s``. The pids left alive."""

    def alive() -> list[int]:
        table = _processes()
        victims = {pid for pid, started in known.items() if table.get(pid, (0, None))[1] == started}
        return sorted(victims | set(family(mark)))

    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = alive()
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive():
            time.sleep(0.1)
    return alive()


@contextmanager
def embedded_ray_reaper() -> Iterator[dict[str, str]]:
    """For the block: the environment to start the embedded Ray with (its mark) and a watcher that ends
    every marked process once this process ends, normally or killed. Does nothing where there is no /proc."""
    if not Path("/proc/self/environ").exists():
        yield {}
        return
    mark = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    read_end, write_end = os.pipe()  # not inheritable: Ray's processes never hold the write end
    watcher = subprocess.Popen(
        [sys.executable, "-I", str(Path(__file__).resolve()), mark],  # -I: nothing on sys.path but the stdlib's
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != OWNER_ENV},
    )
    os.close(read_end)
    try:
        yield {OWNER_ENV: mark}
    finally:
        os.close(write_end)  # the watcher reaps what Ray's shutdown left behind, then exits
        try:
            watcher.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logger.warning("the embedded Ray's reaper (pid %d) is still running", watcher.pid)


def main(argv: list[str]) -> int:
    # A Ctrl-C or a closed terminal reaches the whole process group: outlive the driver to clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    mark = argv[0]
    known: dict[int, str] = {}
    while True:
        readable, _, _ = select.select([sys.stdin.buffer], [], [], 1.0)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break  # every write end is closed: the driver has ended
        known.update(family(mark))  # the raylet's children are reparented once it dies: remember them now
    reap(known, mark)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
