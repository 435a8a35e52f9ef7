"""The order in which the test processes take test files, and a timeline of where the time went (issue 20).

``.ci/run`` runs the tests in two processes (pytest-xdist, ``--dist loadfile``), each taking the next whole file
when it is free. Which file comes next decides how the run ends: xdist by default hands out the files with the
most tests first (``--loadscope-reorder``), so the long end-to-end files, which have few tests, came last and the
run ended on a tail of one process running them alone (at 5b322d6: 94 % of the tests done 8 minutes in, the last
6 % about 8 more). Here the files are put in the order of their measured seconds, longest first (the
longest-processing-time rule), from ``tests/file_seconds.json``; a file not measured yet counts as long, so it
starts early. ``.ci/run`` passes ``--no-loadscope-reorder`` so that xdist keeps this order.

With ``NBTL_TEST_TIMELINE=FILE`` each test process appends one JSON line per test (its process, node id, start
and end) to FILE; ``benchmarks/ci_time.py FILE`` prints where the time went and ``--write`` measures the file
seconds again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SECONDS = Path(__file__).with_name("file_seconds.json")
TIMELINE = "NBTL_TEST_TIMELINE"


def file_of(nodeid: str) -> str:
    """``tests/test_x.py::test_y[1]`` -> ``test_x.py``: the key of ``file_seconds.json``."""
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def measured_seconds(path: Path = SECONDS) -> dict[str, float]:
    """Each test file's measured seconds (empty where the file is missing)."""
    if not path.exists():
        return {}
    return {name: float(seconds) for name, seconds in json.loads(path.read_text())["seconds"].items()}


def longest_first(items: list, seconds: dict[str, float]) -> list:
    """``items`` with their files in the order of ``seconds``, longest first, files not in ``seconds`` before
    all (unknown counts as long); the tests of a file keep their order, and so do files of equal seconds."""
    unknown = max(seconds.values(), default=0.0) + 1.0
    order: dict[str, int] = {}
    for item in items:
        order.setdefault(file_of(item.nodeid), len(order))
    rank = {name: (-seconds.get(name, unknown), first) for name, first in order.items()}
    return sorted(items, key=lambda item: rank[file_of(item.nodeid)])


def record(nodeid: str, start: float, end: float, path: str) -> None:
    """Append one test's line to the timeline ``path`` (one ``write`` of one line: test processes share the file)."""
    line = json.dumps(
        {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "test": nodeid, "start": start, "end": end}
    )
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def timed(item):
    """The body of conftest's ``pytest_runtest_protocol`` hook wrapper: time one test, setup and teardown
    included, when ``$NBTL_TEST_TIMELINE`` names a file."""
    path = os.environ.get(TIMELINE)
    start = time.time()
    result = yield
    if path:
        record(item.nodeid, start, time.time(), path)
    return result
