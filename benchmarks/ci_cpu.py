"""Where the CPU time of a command and everything it starts goes, by kind of process (issue 20: CI within 12
minutes on 2 CPUs, where the tests keep both CPUs busy: the wall time falls only as the CPU time does).

Runs COMMAND and samples every process on the machine twice a second (psutil): each process's user + system
CPU seconds, counted from when it was first seen (processes already running count only what they spend during
the command), under its kind: the test processes, each nbtl command by its subcommand, Ray's trial workers by
what they ended as (``ray::ImplicitFunc``, ``ray::IDLE``), Ray's daemons (raylet, GCS, agents, log monitor), the
MLflow server, the browser of the UI test, and the rest. A process that lives less than half a second may be
missed. Prints the table and writes it as JSON with ``--out``, with a second table: CPU seconds by the test each
process worked for, named by the pytest ``tmp_path`` folder in its working directory or command line (a Ray worker
works in its driver's folder), so that the processes a test starts count under it.

    .venv/bin/python benchmarks/ci_cpu.py -- bash .ci/run
    .venv/bin/python benchmarks/ci_cpu.py --out /tmp/cpu.json -- .venv/bin/python -m pytest -q tests/test_search_e2e.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

#: Substrings of a command line that name a Ray daemon, and the kind they are counted under.
RAY_DAEMONS = {
    "gcs_server": "ray: gcs_server",
    "raylet/raylet": "ray: raylet",
    "dashboard/agent.py": "ray: dashboard agent",
    "runtime_env/agent": "ray: runtime env agent",
    "dashboard/dashboard.py": "ray: dashboard",
    "log_monitor.py": "ray: log monitor",
    "autoscaler/_private/monitor.py": "ray: autoscaler monitor",
    "ray.util.client.server": "ray: client server",
}


#: The folder pytest's ``tmp_path`` gives a test (``.../pytest-of-USER/pytest-N/[popen-gwK/]NAME0``), named by its test.
TEST_FOLDER = re.compile(r"/pytest-of-[^/]+/pytest-\d+/(?:popen-gw\d+/)?([^/\s]+)")


def test_folder(cwd: str, command: list[str]) -> str:
    """The ``tmp_path`` folder of the test a process works for, from its working directory or else its command
    line; "(none)" for processes of no test (pytest itself, the install)."""
    for text in (cwd, " ".join(command)):
        found = TEST_FOLDER.search(text)
        if found:
            return found.group(1)
    return "(none)"


def kind(command: list[str], name: str) -> str:
    """The kind of a process from its command line (``command``) and name."""
    line = " ".join(command)
    title = command[0] if command else name
    if title.startswith("ray::"):  # a Ray worker names itself by what it runs; the agents too
        return {"ray::DashboardAgent": "ray: dashboard agent", "ray::RuntimeEnvAgent": "ray: runtime env agent"}.get(
            title.split()[0], "ray worker: " + title.split()[0].removeprefix("ray::").split(".")[0]
        )
    if "default_worker.py" in line or "setup_worker.py" in line:
        return "ray worker: starting"
    for needle, daemon in RAY_DAEMONS.items():
        if needle in line:
            return daemon
    if "exec(eval(sys.stdin.readline()))" in line:
        return "pytest (test process)"
    if " -m pytest" in line or line.endswith("/pytest") or "/pytest " in line:
        return "pytest (main)"
    if "nbtl/search/reaper.py" in line or "nbtl.search.reaper" in line:
        return "nbtl: embedded Ray's reaper"
    for i, part in enumerate(command[:-1]):
        if part.endswith("/nbtl") or (part == "nbtl" and i and command[i - 1] == "-m"):
            return f"nbtl {command[i + 1]}"
    if "bin/ray" in line:
        return "ray: the ray command"
    if "mlflow" in line and ("server" in line or "uvicorn" in line or "gunicorn" in line):
        return "mlflow server"
    if "chrom" in name.lower():
        return "chromium"
    if "python" in name.lower() or "python" in (command[0] if command else ""):
        return "python, other"
    return "other: " + name


class Sampler:
    """Samples every process every ``interval`` seconds in a thread until :meth:`stop`."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        # (pid, start) -> [kind, cpu seconds at first sight, now, the test's folder]
        self.seen: dict[tuple[int, float], list] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._sample(first=True)
        self._thread.start()
        return self

    def _sample(self, first: bool = False) -> None:
        me = os.getpid()
        for process in psutil.process_iter():
            if process.pid == me:
                continue
            try:
                with process.oneshot():
                    times, key = process.cpu_times(), (process.pid, process.create_time())
                    used = times.user + times.system
                    entry = self.seen.get(key)
                    if entry is None or entry[0].startswith("ray worker"):  # a worker renames itself
                        command = process.cmdline()
                        if entry is None:
                            self.seen[key] = entry = [None, used if first else 0.0, used, "(none)"]
                        entry[0] = kind(command, process.name())
                        if entry[3] == "(none)":  # a Ray Tune trial works in its trial's folder once it starts
                            try:
                                entry[3] = test_folder(process.cwd(), command)
                            except psutil.Error:
                                entry[3] = test_folder("", command)
                    entry[2] = used
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def stop(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """The CPU seconds and processes by kind, and by test folder."""
        self._done.set()
        self._thread.join()
        self._sample()
        kinds: dict[str, dict[str, float]] = {}
        tests: dict[str, dict[str, float]] = {}
        for what, first, last, where in self.seen.values():
            for table, key in ((kinds, what), (tests, where)):
                row = table.setdefault(key, {"cpu_s": 0.0, "processes": 0})
                row["cpu_s"] += max(0.0, last - first)
                row["processes"] += 1
        return tuple(dict(sorted(t.items(), key=lambda item: -item[1]["cpu_s"])) for t in (kinds, tests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table here (JSON)")
    parser.add_argument("--top", type=int, default=25, help="how many kinds to print")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the command to run after --, e.g. -- bash .ci/run")
    sampler = Sampler().start()
    started = time.monotonic()
    code = subprocess.call(command)
    wall = time.monotonic() - started
    table, by_test = sampler.stop()
    total = sum(row["cpu_s"] for row in table.values())
    cpus = os.cpu_count() or 1
    print(
        f"{wall:.0f} s of wall time, {total:.0f} s of CPU time ({total / (wall * cpus):.0%} of {cpus} CPUs); "
        f"the command exited {code}"
    )
    print(f"  {'CPU s':>7}  {'share':>5}  {'procs':>5}  kind")
    for what, row in list(table.items())[: args.top]:
        print(f"  {row['cpu_s']:7.1f}  {row['cpu_s'] / max(total, 1e-9):5.1%}  {row['processes']:5d}  {what}")
    print("by test (its tmp_path folder; (none): pytest's own processes and the rest)")
    print(f"  {'CPU s':>7}  {'share':>5}  {'procs':>5}  test")
    for where, row in list(by_test.items())[: args.top]:
        print(f"  {row['cpu_s']:7.1f}  {row['cpu_s'] / max(total, 1e-9):5.1%}  {row['processes']:5d}  {where}")
    if args.out:
        document = {
            "command": command,
            "wall_s": round(wall, 1),
            "cpus": cpus,
            "exit": code,
            "kinds": table,
            "tests": by_test,
        }
        args.out.write_text(json.dumps(document, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
