"""A full disk ends in one line naming it and what to do, not in tracebacks (issue 19). A real tmpfs of 64 KiB
where this machine lets the test mount one (root, mount(8)); skipped with the reason otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_nbtl


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here to make a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip() or made.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_tracking_store_is_one_line(full_disk, tmp_path):
    data = tmp_path / "data"
    for label in (0, 1):
        (data / str(label)).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i + 100 * label, np.uint8)).save(data / str(label) / f"{i}.png")
    done = run_nbtl(
        "fit", str(data), "--backbones", "efficientnet_lite0", "--tracking-uri", f"sqlite:///{full_disk / 'mlflow.db'}",
        cwd=tmp_path,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("nbtl fit: error: the disk is full"), done.stderr[-3000:]
    assert "--tracking-uri" in errors[0] and "with room" in errors[0]
    assert Path(full_disk).is_mount()


def test_a_full_disk_is_found_through_the_chain_of_errors(tmp_path):
    import errno

    from nbtl.errors import disk_full_reason

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "trial.pt"))
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from inner
    except RuntimeError as outer:
        line = disk_full_reason(outer)
    assert line.startswith(f"the disk is full at {tmp_path / 'results'}") and "\n" not in line
    assert disk_full_reason(ValueError("something else")) is None
