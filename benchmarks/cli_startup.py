"""How long ``nbtl --help`` takes: the command line's start, which must stay light (goal: under 0.5 s).

Runs ``nbtl --help`` (the installed console script, else ``python -m nbtl``) a few times as a fresh process each,
after one warm-up run (the page cache), and prints the median wall time, the runs, and the heavy libraries that
``import nbtl.cli`` loads (none, as ``tests/test_imports.py`` checks).

    python benchmarks/cli_startup.py                 # median of 5 runs
    python benchmarks/cli_startup.py --repeats 9

On a machine whose CPUs other jobs share the figure is higher than on an idle one; run it there with ``nice``
or ``chrt --idle 0`` only to check that it works, not for the figure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: What ``nbtl --help`` must not import (tests/test_imports.py's HEAVY).
HEAVY = ("torch", "ray", "mlflow", "optuna", "pandas", "sklearn", "matplotlib", "torchvision")


def nbtl_help() -> list[str]:
    """``nbtl --help`` as a user runs it: the console script next to this Python, else ``python -m nbtl``."""
    script = Path(sys.executable).parent / "nbtl"
    return [str(script), "--help"] if script.exists() else [sys.executable, "-m", "nbtl", "--help"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default: %(default)s)")
    args = parser.parse_args()

    command = nbtl_help()
    subprocess.run(command, check=True, capture_output=True)  # warm-up: the files into the page cache
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    code = f"import nbtl.cli, sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    print(f"{' '.join(command)}: median {statistics.median(times):.3f} s of {args.repeats} runs")
    print("runs: " + ", ".join(f"{t:.3f}" for t in times))
    print(f"heavy libraries imported by nbtl.cli: {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    main()
