"""The test processes take test files longest first (tests/file_order.py), and the timeline records each test."""

from __future__ import annotations

import json
from types import SimpleNamespace

import file_order


def items(*nodeids: str) -> list:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_files_go_longest_first_keeping_their_tests_in_order():
    collected = items("tests/test_a.py::one", "tests/test_a.py::two", "tests/test_b.py::one", "tests/test_c.py::x[1]")
    ordered = file_order.longest_first(collected, {"test_a.py": 5.0, "test_b.py": 80.0, "test_c.py": 20.0})
    assert [i.nodeid for i in ordered] == [
        "tests/test_b.py::one",
        "tests/test_c.py::x[1]",
        "tests/test_a.py::one",
        "tests/test_a.py::two",
    ]


def test_a_file_not_measured_yet_counts_as_long_and_ties_keep_the_collection_order():
    collected = items("tests/test_a.py::t", "tests/test_new.py::t", "tests/test_b.py::t", "tests/test_later.py::t")
    ordered = file_order.longest_first(collected, {"test_a.py": 10.0, "test_b.py": 10.0})
    assert [file_order.file_of(i.nodeid) for i in ordered] == ["test_new.py", "test_later.py", "test_a.py", "test_b.py"]
    assert file_order.longest_first(collected, {}) == collected


def test_this_session_collected_its_files_in_the_measured_order(request):
    seconds = file_order.measured_seconds()
    files = list(dict.fromkeys(file_order.file_of(item.nodeid) for item in request.session.items))
    unknown = max(seconds.values(), default=0.0) + 1.0
    keys = [seconds.get(name, unknown) for name in files]
    assert keys == sorted(keys, reverse=True), "conftest's pytest_collection_modifyitems did not order the files"


def test_the_timeline_gets_one_line_per_test(tmp_path, monkeypatch):
    timeline = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(file_order.TIMELINE, str(timeline))
    runs = file_order.timed(SimpleNamespace(nodeid="tests/test_x.py::t"))
    next(runs)  # the hook wrapper yields to the test's protocol
    try:
        runs.send(True)
    except StopIteration as done:
        assert done.value is True  # the protocol's result is passed on
    (line,) = timeline.read_text().splitlines()
    row = json.loads(line)
    assert row["test"] == "tests/test_x.py::t" and row["end"] >= row["start"] and row["worker"]
