"""The live status line of ``nbtl search`` on a terminal: one line kept at the bottom (trials done / running / left,
the best so far, the time spent and left) with the progress lines above it, removed at the end. The command runs
on a real pseudo-terminal; without one (a pipe, as in every other test) it prints plain lines only
(``tests/test_search_e2e.py``)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

import pytest

from conftest import ONE_THREAD, REPO, nbtl_command, new_store

pytestmark = pytest.mark.e2e


def run_on_a_terminal(args: list[str], cwd, columns: int = 200, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``nbtl ARGS`` with its stdout on a pseudo-terminal ``columns`` wide; its exit status and all it wrote
    there (stderr goes to a file)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    with open(cwd / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            nbtl_command(*args), stdin=subprocess.DEVNULL, stdout=slave, stderr=stderr, cwd=cwd,
            env={**os.environ, **ONE_THREAD, "TERM": "xterm", **(env or {})},
        )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end closed (the process ended)
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=600), b"".join(chunks).decode("utf-8", errors="replace")


def test_a_search_on_a_terminal_keeps_one_live_status_line(tmp_path, shared_ray):
    code, text = run_on_a_terminal(
        [
            "search", str(REPO / "search_spaces" / "tiny.yaml"), "--data", "digits", "--trials", "2",
            "--per-class", "8", "--image-size", "16", "--keep-weights", "0", "--no-register",
            "--tracking-uri", new_store(tmp_path), "--storage-path", str(tmp_path / "results"),
        ],
        tmp_path,
        env=shared_ray,
    )  # fmt: skip
    assert code == 0, text[-3000:] + (tmp_path / "stderr.txt").read_text()[-3000:]
    statuses = re.findall(r"trials: (\d+) done, (\d+) running, (\d+) left \| ([^|\r\n]+) \| ([^\r\n]+?spent)", text)
    assert statuses, text[-3000:]
    # it counts the trials: some status showed one running, and done + running + left is the trial count
    assert any(int(running) >= 1 for _, running, _, _, _ in statuses)
    assert all(int(done) + int(running) + int(left) == 2 for done, running, left, _, _ in statuses)
    assert any(re.fullmatch(r"best val_accuracy [01]\.\d{4}", best) for *_, best, _ in statuses)
    # the progress lines are printed above it, whole, and the table at the end comes after it was removed
    assert re.search(r"trial \w+ finished \[2/2\]: best_val_accuracy=", text)
    tail = text[text.rindex("trials: ") :]
    assert "Trials (best first, the top " in tail and "Best config:" in tail
