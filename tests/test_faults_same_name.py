"""Searches of one name started at once never share a results folder (issue 19: both printed the same `Results:`
folder, and one's results table and checkpoints were the other's). Real threads racing on a real folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import ONE_THREAD, assert_no_run_left_running, nbtl_command
from nbtl.search.options import claim_experiment_dir


def test_each_search_claims_a_folder_of_its_own(tmp_path):
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(claim_experiment_dir(tmp_path, "same"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == 8 and "same" in claimed
    assert all((tmp_path / name).is_dir() for name in claimed)
    assert all(name == "same" or name.startswith("same_") for name in claimed)
    assert claim_experiment_dir(tmp_path, "other") == "other"  # a free name is used as it is


CONCURRENT_SPACE = {
    "data": {"image_size": 32, "per_class": 30, "val_fraction": 0.2, "test_fraction": 0.2},
    "search": {
        "trials": 2,
        "max_concurrent": 1,
        "seed": 0,
        "resources": {"cpu": 1, "gpu": 0},
        "sampler": {"type": "random"},
        "scheduler": {"type": "fifo"},
        "start_points": [],
    },
    "parameters": {
        "backbone": "efficientnet_lite0",
        "freeze_blocks": 9,
        "lr": {"low": 0.005, "high": 0.05, "log": True},
        "head": "mlp",
        "epochs": 2,
        "batch_size": 32,
    },
}


@pytest.mark.e2e
def test_concurrent_searches_on_one_store_and_storage_path(tmp_path, shared_ray):
    """Two real searches of one name at once on one SQLite store and one storage path (a name free of others is
    kept as it is: test_each_search_claims_a_folder_of_its_own). Each completes with its own folder, every one of
    its trials in its own results.csv and in MLflow under its own parent run, and nothing left RUNNING."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(CONCURRENT_SPACE, sort_keys=False))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "results"
    names = ["twin", "twin"]
    processes = []
    for i, name in enumerate(names):
        log = open(tmp_path / f"search{i}.log", "w")
        command = nbtl_command(
            "search", str(space), "--name", name, "--data", "digits",
            "--tracking-uri", tracking_uri, "--storage-path", str(storage),
        )  # fmt: skip
        processes.append(
            (
                subprocess.Popen(
                    command,
                    cwd=tmp_path,
                    env={**os.environ, **ONE_THREAD, **shared_ray},  # both join this test process's Ray head
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    logs = []
    for i, (process, log) in enumerate(processes):
        code = process.wait(timeout=900)
        log.close()
        logs.append((tmp_path / f"search{i}.log").read_text())
        assert code == 0, logs[-1][-3000:]
    folders = [re.search(r"^Results: (.+)$", text, re.M).group(1).strip() for text in logs]
    assert len(set(folders)) == 2, folders  # the second "twin" took a suffixed folder, and said so
    assert sorted(Path(f).name for f in folders)[0] == "twin" and any(Path(f).name.startswith("twin_") for f in folders)

    client = MlflowClient(tracking_uri=tracking_uri)
    parents = []
    for folder in folders:
        table = pd.read_csv(Path(folder) / "results.csv")
        assert len(table) == 2 and (table["status"] == "FINISHED").all(), table
        state = json.loads((Path(folder) / "nbtl_search.json").read_text())
        parents.append(state["parent_run_id"])
        children = client.search_runs(
            [client.get_run(state["parent_run_id"]).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'",
        )
        assert sorted(c.data.tags["nbtl.trial_id"] for c in children) == sorted(table["trial_id"].astype(str))
    assert len(set(parents)) == 2  # each search its own parent run, so each can be resumed
    assert_no_run_left_running(tracking_uri)
