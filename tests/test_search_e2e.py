"""End to end: the ``nbtl search`` CLI runs a tiny real search (Ray Tune + Optuna + ASHA) and the MLflow
store, read back with ``MlflowClient``, holds one parent run and one child run per trial."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, run_nbtl
from nbtl.tracking import search_experiment

pytestmark = pytest.mark.e2e

TINY = REPO / "search_spaces" / "tiny.yaml"
TRIALS = 3
NAME = "e2e-tiny"
CONFIG_PARAMS = {
    "backbone",
    "transfer_blocks",
    "freeze_blocks",
    "lr",
    "lr_decay",
    "head_lr",
    "l2sp_alpha",
    "l2_beta",
    "l2_head",
    "head",
    "epochs",
    "batch_size",
    "seed",
}


def run_tiny_search(tmp_path: Path, tracking_uri: str, *extra: str, env: dict[str, str] | None = None) -> str:
    """Run in ``tmp_path/work``, a folder apart from the store (``tmp_path/mlflow.db``), so a write to the
    default ``./mlflow.db`` instead of ``--tracking-uri`` shows."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    result = run_nbtl(
        "search",
        str(TINY),
        "--data",
        "digits",
        "--trials",
        str(TRIALS),
        "--keep-weights",  # the model hand-over is tested in test_models_e2e and test_mlflow_ui
        "0",
        "--name",
        NAME,
        "--tracking-uri",
        tracking_uri,
        "--storage-path",
        str(tmp_path / "results"),
        *extra,
        cwd=workdir,
        env=env,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    return result.stdout


def check_store(stdout: str, tracking_uri: str, name: str = NAME, space: Path = TINY) -> tuple[object, list]:
    """Assert what every search of ``space`` leaves in MLflow; return the parent and child runs."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(search_experiment(name))
    assert experiment is not None, "no MLflow experiment named after the search"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == TRIALS == len(runs) - 1
    assert parent.info.status == "FINISHED"

    for child in children:
        assert child.info.status == "FINISHED", (
            child.info.run_id,
            child.info.status,
            child.data.tags.get("nbtl.error"),
        )
        assert CONFIG_PARAMS <= set(child.data.params), CONFIG_PARAMS - set(child.data.params)
        assert child.data.params["backbone"] == "efficientnet_lite0"
        assert int(child.data.params["freeze_blocks"]) <= int(child.data.params["transfer_blocks"]) <= 9
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2, steps
        assert child.data.tags["nbtl.search"] == name and child.data.tags["nbtl.dataset"] == "digits"
        assert child.data.tags["nbtl.backbone"] == "efficientnet_lite0" and child.data.tags["nbtl.version"]
        assert child.data.tags["nbtl.trial_id"] and child.data.tags["nbtl.attempt"] == "1"
        assert child.data.tags["nbtl.torch_threads"] == "1"  # tiny.yaml: one CPU per trial, so one torch thread
        # run names tell trials apart at a glance: their id (as in the table) and key settings
        trial_id = child.data.tags["nbtl.trial_id"]
        assert re.fullmatch(
            rf"{trial_id} efficientnet_lite0 transfer=\w+ freeze=\d+ \w+ lr=\S+", child.info.run_name
        ), child.info.run_name
        for key in ("train_loss", "val_loss", "val_macro_f1", "val_weighted_f1", "best_val_accuracy", "test_accuracy"):
            assert len(client.get_metric_history(child.info.run_id, key)) == len(steps), key
        assert 0.0 <= child.data.metrics["best_val_accuracy"] <= 1.0
        # ASHA's early stops are tagged; a trial that ran all its epochs is not.
        assert (child.data.tags.get("nbtl.stopped_early") == "true") == (len(steps) < 2), (steps, child.data.tags)

    # The printed best is the child with the highest best_val_accuracy.
    match = re.search(r"Best trial: (\S+) \(MLflow run (\w+)\): best_val_accuracy=([0-9.]+)", stdout)
    assert match, stdout[-3000:]
    best_run_id, printed = match.group(2), float(match.group(3))
    by_id = {c.info.run_id: c for c in children}
    assert best_run_id in by_id
    top = max(c.data.metrics["best_val_accuracy"] for c in children)
    assert by_id[best_run_id].data.metrics["best_val_accuracy"] == pytest.approx(top)
    assert printed == pytest.approx(top, abs=1e-4)
    assert parent.data.tags["nbtl.best_run_id"] == best_run_id

    # The parent holds the results table, the best config and the search space.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "results.csv",
        "best_config.yaml",
        "search_space.yaml",
        "val_accuracy_per_trial.png",
        "best_accuracy_vs_trials.png",
        "best_accuracy_vs_time.png",
        "optuna_plots.html",  # Optuna's interactive plots, plotly.js inlined
    } <= artifacts
    directory = client.download_artifacts(parent.info.run_id, "")
    page = (Path(directory) / "optuna_plots.html").read_text()
    assert "<h2>Optimisation history" in page and "Plotly.newPlot" in page
    table = pd.read_csv(Path(directory) / "results.csv")
    assert sorted(table["run_id"]) == sorted(by_id) and table["run_id"].iloc[0] == best_run_id
    best_config = yaml.safe_load((Path(directory) / "best_config.yaml").read_text())
    for key in CONFIG_PARAMS & set(best_config):
        assert str(best_config[key]) == by_id[best_run_id].data.params[key], key
    assert yaml.safe_load((Path(directory) / "search_space.yaml").read_text()) == yaml.safe_load(space.read_text())
    return parent, children


OPEN_STUDY = """
import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
print(json.dumps([{"state": t.state.name, "value": t.value, "params": t.params} for t in study.trials]))
"""


def overlapping(children) -> bool:
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    return any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))


def test_search_on_a_ray_head_with_token_auth_tracks_where_it_is_told(tmp_path, tracking_uri, shared_ray, monkeypatch):
    # The test process's `ray start --head` (token authentication on), named by --address; the command has its
    # token's path, but neither $RAY_ADDRESS nor RAY_AUTH_MODE: --address sets that. (The embedded Ray's searches:
    # tests/test_lifecycle.py, test_interrupt.py, test_faults_resume.py, test_search_budget.py, test_packaging.py.)
    ray_head = shared_ray["RAY_ADDRESS"]
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    stdout = run_tiny_search(
        tmp_path,
        tracking_uri,
        "--address",
        ray_head,
        "--max-concurrent",
        "2",
        "--keep-checkpoints",
        "--cache-size",
        "1G",
        "--subsample",  # the trials train and score on half the images: a data file of their own, sent as its path
        "0.5",
        env={"RAY_AUTH_TOKEN_PATH": shared_ray["RAY_AUTH_TOKEN_PATH"]},
    )
    assert "Trials (best first, the top " in stdout and "results.csv):" in stdout and "Best config:" in stdout
    assert "\r" not in stdout and " running" not in stdout  # not a terminal: plain lines, no live status line
    parent, children = check_store(stdout, tracking_uri)
    assert parent.data.params["max_concurrent"] == "2"
    assert overlapping(children), "max_concurrent=2 but no two trials ran at the same time"
    # The runs went to --tracking-uri, not to the default store ./mlflow.db of the working directory.
    assert tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not (tmp_path / "work" / "mlflow.db").exists()
    # ... nor its artifacts to MLflow's default ./mlruns: they sit next to the store.
    assert not (tmp_path / "work" / "mlruns").exists()
    assert list((tmp_path / "mlartifacts").glob("*/artifacts/search_space.yaml"))  # <run id>/artifacts/
    # Ray Tune's own results stay on disk with the best config.
    assert list((tmp_path / "results").glob(f"{NAME}*/best_config.yaml"))
    # The Optuna study is in an RDB beside the results (optuna-dashboard's input): another process opens it.
    storage = f"sqlite:///{tmp_path / 'results' / NAME / 'optuna.db'}"
    assert parent.data.tags["nbtl.optuna_storage"] == storage and parent.data.tags["nbtl.optuna_study"] == NAME
    opened = subprocess.run(
        [sys.executable, "-c", OPEN_STUDY, NAME, storage], capture_output=True, text=True, timeout=120, check=True
    )
    trials = json.loads(opened.stdout)
    assert len(trials) == TRIALS and all(t["state"] == "COMPLETE" and t["value"] is not None for t in trials), trials
    best = max(c.data.metrics["best_val_accuracy"] for c in children)
    assert max(t["value"] for t in trials) <= best + 1e-9  # Optuna was told each trial's results, none above the best
    assert {"lr", "freeze_blocks"} <= set(trials[0]["params"])
    # The images were decoded once into one memory-mapped file under the storage path; the trials read the half of
    # them --subsample keeps, stratified, from a second file beside it.
    assert "decoded once in" in stdout and "memory-mapped from" in stdout
    assert len(list((tmp_path / "results" / "nbtl_data").glob("*/images.npy"))) == 2
    kept = re.search(r"subsample 0\.5: trials train on ([\d,]+) of ([\d,]+) training images and evaluate on "
                     r"([\d,]+) of ([\d,]+) validation and ([\d,]+) of ([\d,]+) test images", stdout)  # fmt: skip
    assert kept, stdout[-3000:]
    counts = [int(n.replace(",", "")) for n in kept.groups()]
    assert counts[0] == round(counts[1] / 2) and counts[2] == round(counts[3] / 2) and counts[4] == round(counts[5] / 2)
    assert parent.data.params["subsample"] == "0.5"
    for child in children:
        metrics = child.data.metrics
        assert (metrics["train_images"], metrics["val_images"], metrics["test_images"]) == tuple(counts[::2])
    assert parent.data.tags["nbtl.ray_address"] == ray_head
    assert parent.data.tags["nbtl.ray_gcs_address"].rsplit(":", 1)[1] == ray_head.rsplit(":", 1)[1]
    # --keep-checkpoints: the trial checkpoints a finished search otherwise deletes (tests/test_lifecycle.py) stay
    assert list((tmp_path / "results").glob(f"{NAME}*/*/checkpoint_*/trial.pt"))
