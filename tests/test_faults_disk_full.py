"""A full disk ends in one line naming it and what to do, not in tracebacks (issue 19). A real tmpfs (64 KiB for
the tracking store; 1 MiB for a search's storage path, then grown as a user frees space) where this machine lets the
test mount one (root, mount(8)); skipped with the reason otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from conftest import assert_no_run_left_running, new_store, run_nbtl
from nbtl.tracking import search_experiment


@pytest.fixture
def full_disk(tmp_path, request):
    mount = tmp_path / "full"
    mount.mkdir()
    size = getattr(request, "param", "64k")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here to make a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
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


SPACE = {
    "name": "full",
    "data": {"image_size": 32, "per_class": 20, "val_fraction": 0.2, "test_fraction": 0.2},
    "search": {
        "trials": 2,
        "max_concurrent": 1,
        "seed": 0,
        "sampler": {"type": "random"},
        "scheduler": {"type": "fifo"},
        "start_points": [],
    },
    "parameters": {
        "backbone": "efficientnet_lite0",
        "transfer_blocks": 9,
        "freeze_blocks": 6,
        "lr": {"low": 0.005, "high": 0.05, "log": True},
        "head": "linear",
        "epochs": 2,
        "batch_size": 32,
    },
}


@pytest.mark.e2e
@pytest.mark.parametrize("full_disk", ["1m"], indirect=True)
def test_a_search_on_a_full_disk_stops_in_one_line_and_resumes_when_there_is_room(full_disk, tmp_path, shared_ray):
    """--storage-path on a 1 MiB tmpfs: the search's state fits, a trial's first checkpoint does not. The trial
    that finds the disk full stops the search (no retry, no other trial started): one line naming the disk and
    the --resume command, exit 1, the parent run FAILED with that reason, nothing left RUNNING. Space comes back
    (the tmpfs grows, as when a user frees some) and the search resumes to its end, the trial that failed on the
    full disk run again."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    uri = new_store(tmp_path)
    where = ["--storage-path", str(full_disk), "--tracking-uri", uri]
    done = run_nbtl("search", str(space), "--data", "digits", *where, cwd=tmp_path, env=shared_ray)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("nbtl search: error:")]
    assert len(errors) == 1 and errors[0].startswith("nbtl search: error: the disk is full"), done.stderr[-3000:]
    assert f"nbtl search --resume full --storage-path {full_disk}" in errors[0], errors[0]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Token authentication is enabled" not in done.stderr, done.stderr[-3000:]  # Ray's notice
    assert "found the disk full" in done.stdout and "retrying" not in done.stdout, done.stdout[-3000:]
    assert_no_run_left_running(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(search_experiment("full"))
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert parents[0].data.tags["nbtl.error"].startswith("DiskFullError: the disk is full")
    assert len(runs) == 2, "the trial after the one that found the disk full was never started"

    grown = subprocess.run(["mount", "-o", "remount,size=512m", str(full_disk)], capture_output=True, text=True)
    assert grown.returncode == 0, grown.stderr
    resumed = run_nbtl("search", "--resume", "full", *where, cwd=tmp_path, env=shared_ray)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "finished [2/2]" in resumed.stdout and "[3/2]" not in resumed.stdout, resumed.stdout[-3000:]
    assert_no_run_left_running(uri)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children), [r.info.status for r in runs]
    assert next(r for r in runs if r.info.run_id == parents[0].info.run_id).info.status == "FINISHED"
    table = pd.read_csv(next(full_disk.glob("full*/results.csv")))
    assert sorted(table["status"]) == ["FINISHED", "FINISHED"]
