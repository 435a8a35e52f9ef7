"""benchmarks/equal_time.py --smoke-test end to end (real nbtl subprocesses, Ray, MLflow stores), and the
ablations' spaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "equal_time.py"
sys.path.insert(0, str(REPO / "benchmarks"))


def _run(results: Path, work: Path, ray: dict[str, str]) -> subprocess.CompletedProcess:
    """The smoke test, its search joining this test process's Ray head (``ray``: conftest.shared_ray's environment)
    instead of starting an embedded one (a benchmark's own runs start theirs)."""
    command = [sys.executable, str(SCRIPT), "--smoke-test", "--results", str(results), "--work-dir", str(work)]
    env = {**os.environ, **ray}
    return subprocess.run(command + ["--keep"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


@pytest.mark.e2e
def test_smoke_test_rows_match_the_stores_and_resume(tmp_path, shared_ray):
    from mlflow import MlflowClient

    from nbtl.tracking import chosen_training_runs

    results, work = tmp_path / "results.jsonl", tmp_path / "work"
    done = _run(results, work, shared_ray)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["method"]: row for row in map(json.loads, results.read_text().splitlines())}
    assert set(rows) == {"probe", "default"}
    for row in rows.values():
        assert row["exit"] == 0 and 0 <= row["test_accuracy"] <= 1 and row["commit"] and "dirty" in row
    from equal_time import SMOKE, SMOKE_TASK, budget_label

    folder = work / budget_label(SMOKE["budget"]) / SMOKE_TASK.name / "seed0"

    # default: the chosen trial is the one whose model the search registered
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'default' / 'mlflow.db'}")
    parents = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parent = next(r for r in parents if "nbtl.best_trial_id" in r.data.tags)
    assert parent.data.tags["nbtl.best_trial_id"] == rows["default"]["chosen_trial"]
    assert parent.data.tags["nbtl.ray_address"] == shared_ray["RAY_ADDRESS"]  # the search joined the test's head
    versions = client.search_model_versions()
    assert [v.tags.get("nbtl.trial_id") for v in versions] == [rows["default"]["chosen_trial"]]
    # how noisy that choice was, from the same table: the chosen trial's test accuracy, among the tied at the top
    selection = rows["default"]["selection"]
    assert selection["chosen_test_accuracy"] == rows["default"]["test_accuracy"]
    assert selection["tied"] >= 1 and selection["n_val"] >= 1 and selection["scored_trials"] >= selection["near"]
    assert selection["tied_test_min"] <= selection["chosen_test_accuracy"] <= selection["tied_test_max"]

    # probe (nbtl train): its metrics are those of the run nbtl train tagged nbtl.chosen
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'probe' / 'mlflow.db'}")
    chosen = chosen_training_runs(client)
    assert len(chosen) == 1
    for key in ("test_accuracy", "test_macro_f1", "best_val_accuracy"):
        assert rows["probe"][key] == chosen[0].data.metrics[key]

    # resume: every run is in the results file already
    again = _run(results, work, shared_ray)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 run(s) to do" in again.stdout
    assert len(results.read_text().splitlines()) == 2


def test_each_ablation_changes_one_thing_and_loads(tmp_path):
    import equal_time

    from nbtl.search import load_space

    base = yaml.safe_load(equal_time.SPACES["default"].read_text())
    current = [m for m in equal_time.ABLATIONS if m not in equal_time.RETIRED]  # no-prior: the same as default now
    assert "with-prior" in current and "no-prior" not in current
    for method in (*current, "random"):
        args = type("Args", (), {"epochs": None})()
        folder = tmp_path / method
        folder.mkdir()
        path = equal_time.prepare_method_space(method, args, folder)
        changed = yaml.safe_load(path.read_text())
        differs = [
            (section, key)
            for section in ("data", "search", "parameters")
            for key in set(base.get(section) or {}) | set(changed.get(section) or {})
            if (base.get(section) or {}).get(key) != (changed.get(section) or {}).get(key)
        ]
        # random: its sampler and no start points (its prior is off, as default.yaml's is)
        assert len(differs) == (2 if method == "random" else 1), (method, differs)
        space = load_space(path)
        assert space.prefix_cache is (method != "no-cache")
