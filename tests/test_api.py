"""The Python API end to end: ``nbtl.search(space, data, ...)`` from a script (a fresh interpreter, as a notebook
runs it) on the tiny space, its result read back against the MLflow store it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from conftest import ONE_THREAD, new_store
from nbtl.backbones import load_pretrained_state_dict

pytestmark = pytest.mark.e2e

SCRIPT = """
import json, sys
import nbtl

result = nbtl.search(
    "tiny", "digits", trials=2, name="api", tracking_uri=sys.argv[1], storage_path=sys.argv[2], time_budget="10m",
    weights={"efficientnet_lite0": sys.argv[3]},
)
print(json.dumps({
    "rows": len(result.table), "columns": list(result.table.columns), "best_config": result.best_config,
    "model_uri": result.model_uri, "parent_run_id": result.parent_run_id, "experiment_path": result.experiment_path,
    "best_run_id": result.best["run_id"],
}))
"""


def test_nbtl_search_from_python_returns_the_table_best_config_and_model(tmp_path, shared_ray):
    # the search also trains from a local weights file (--weights on the command line): Lite0's own, saved here
    weights = tmp_path / "lite0.pth"
    torch.save(load_pretrained_state_dict("efficientnet_lite0"), weights)
    uri = new_store(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, uri, str(tmp_path / "results"), str(weights)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, **ONE_THREAD, **shared_ray},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2 and {"trial_id", "run_id", "status", "best_val_accuracy"} <= set(result["columns"])
    assert result["best_config"]["backbone"] == "efficientnet_lite0" and "lr" in result["best_config"]
    assert result["model_uri"] == "models:/api/1"  # registered under the search's name
    assert (tmp_path / "results" / "api" / "results.csv").exists() and result["experiment_path"].endswith("api")
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["nbtl.best_run_id"] == result["best_run_id"]
    assert parent.data.params["weights"] == json.dumps({"efficientnet_lite0": str(weights)})
    assert "Trials (best first" not in done.stdout  # the API prints no console table; progress goes to logging


SCRIPT_COMMANDS = """
import json, sys
import nbtl

uri, folder = sys.argv[1], sys.argv[2]
found = nbtl.recommend("digits", per_class=12, image_size=32, out=folder + "/recommended.yaml")
kept = nbtl.api.train(folder + "/recommended.yaml", epochs=1, floor=False, tracking_uri=uri)
study = nbtl.zoo(
    "digits", ["efficientnet_lite0"], ["linear"], folds=2, per_class=12, image_size=32, tracking_uri=uri,
    storage_path=folder + "/zoo", max_concurrent=1,
)
print(json.dumps({
    "configs": len(found.configs), "backbone": found.configs[0]["config"]["backbone"],
    "task_images": int(found.task.dataset["n_images"]), "ranked_by": found.ranked_by,
    "kept": kept.run_name, "accuracy": kept.metrics["best_val_accuracy"], "run_id": kept.run.run_id,
    "zoo_folds": len(study.folds), "zoo_finished": int((study.folds["status"] == "FINISHED").sum()),
    "zoo_cells": len(study.summary),
}))
"""


def test_recommend_train_and_zoo_from_python(tmp_path, shared_ray):
    """``nbtl.recommend``, ``nbtl.api.train`` (``nbtl train``'s function) and ``nbtl.zoo`` from a script, in a fresh
    interpreter: a recommendation written and trained, and a two-fold zoo study, read back against the store."""
    uri = new_store(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_COMMANDS, uri, str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, **ONE_THREAD, "NBTL_CACHE_DIR": str(tmp_path / "cache"), **shared_ray},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["configs"] >= 1 and result["backbone"].startswith("efficientnet_lite")
    assert result["task_images"] < 120 and result["ranked_by"] == "logme_best"  # the training split only
    assert (tmp_path / "recommended.yaml").exists() and result["kept"] == "recommended"
    assert 0.0 <= result["accuracy"] <= 1.0
    run = MlflowClient(tracking_uri=uri).get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["nbtl.chosen"] == "true"
    assert result["zoo_folds"] == 2 == result["zoo_finished"] and result["zoo_cells"] == 1
