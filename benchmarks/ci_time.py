"""Where the test run's time went (issue 20: CI within 12 minutes on 2 CPUs).

Reads the timeline the tests write with ``NBTL_TEST_TIMELINE=FILE`` (``tests/file_order.py``: one line per test,
its process, start and end) and prints the run's wall time, each test process's busy time and when it finished,
the work that remained when the first process ran out of files (the tail), and the longest files.
``--write`` stores each file's seconds in ``tests/file_seconds.json``, the order in which the test processes
take the files, longest first.

    NBTL_TEST_TIMELINE=/tmp/timeline.jsonl bash .ci/run
    .venv/bin/python benchmarks/ci_time.py /tmp/timeline.jsonl [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
import measured_at  # noqa: E402
from file_order import SECONDS, file_of  # noqa: E402  (tests/ is not a package)


def read_timeline(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"ci_time: {path} has no tests; run the tests with NBTL_TEST_TIMELINE={path}")
    table = pd.DataFrame(rows)
    table["file"] = table["test"].map(file_of)
    table["seconds"] = table["end"] - table["start"]
    return table


def summary(table: pd.DataFrame) -> dict:
    """The run's figures: wall time (first start to last end), per process busy time and end, the tail."""
    t0 = table["start"].min()
    wall = table["end"].max() - t0
    workers = table.groupby("worker").agg(busy=("seconds", "sum"), end=("end", "max"))
    workers["end"] -= t0
    first_done = workers["end"].min()
    return {
        "tests": len(table),
        "wall_s": round(wall, 1),
        "work_s": round(table["seconds"].sum(), 1),
        "workers": {w: {"busy_s": round(r.busy, 1), "end_s": round(r.end, 1)} for w, r in workers.iterrows()},
        "tail_s": round(wall - first_done, 1),
        "ideal_s": round(table["seconds"].sum() / len(workers), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("timeline", type=Path)
    parser.add_argument("--top", type=int, default=15, help="how many of the longest files to list")
    parser.add_argument("--write", action="store_true", help=f"write each file's seconds to {SECONDS}")
    args = parser.parse_args(argv)
    table = read_timeline(args.timeline)
    figures = summary(table)
    print(
        f"{figures['tests']} tests, {figures['wall_s'] / 60:.1f} min from the first start to the last end; "
        f"{figures['work_s'] / 60:.1f} min of test time in {len(figures['workers'])} processes "
        f"(evenly shared: {figures['ideal_s'] / 60:.1f} min); tail {figures['tail_s']:.0f} s"
    )
    for worker, w in figures["workers"].items():
        print(f"  {worker}: busy {w['busy_s'] / 60:.1f} min, last test ended at {w['end_s'] / 60:.1f} min")
    files = table.groupby("file").agg(
        seconds=("seconds", "sum"), tests=("test", "size"), worker=("worker", "first"), start=("start", "min")
    )
    files["start"] -= table["start"].min()
    files = files.sort_values("seconds", ascending=False)
    print(f"the {args.top} longest files (seconds, tests, process, start s):")
    for name, row in files.head(args.top).iterrows():
        print(f"  {row.seconds:7.1f}  {row.tests:4d}  {row.worker:>4}  {row.start:6.0f}  {name}")
    if args.write:
        SECONDS.write_text(
            json.dumps(
                {
                    "measured_at": measured_at.label(*measured_at.commit()),
                    "how": "benchmarks/ci_time.py --write from NBTL_TEST_TIMELINE of bash .ci/run (2 CPUs)",
                    "seconds": {name: round(s, 1) for name, s in files["seconds"].items()},
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {SECONDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
