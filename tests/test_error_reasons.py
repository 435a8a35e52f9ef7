"""Why a trial failed, in one line: the exception's type and message on the console and on the trial's MLflow
run; "killed or out of memory" only when its worker really died without a traceback."""

from __future__ import annotations

import copy
import re
import traceback

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from ray.exceptions import ActorDiedError, RayTaskError

from conftest import REPO, run_nbtl
from nbtl.errors import ConfigError, TrialDivergedError
from nbtl.search.callbacks import WORKER_DIED, reason_from_error_text


def error_file(*errors: BaseException) -> str:
    """An ``error.txt`` as Ray Tune's ``Trial.handle_error`` writes it, one failure per error."""
    return "".join(f"Failure # {i} (occurred at 2026-01-01_00-00-0{i})\n{error}\n" for i, error in enumerate(errors, 1))


def task_error(error: BaseException) -> RayTaskError:
    """A real ``RayTaskError`` of ``error`` raised in a trial, as a worker sends it to the driver."""
    try:
        try:
            raise KeyError("the cause")
        except KeyError as cause:
            raise error from cause
    except type(error):
        return RayTaskError("ImplicitFunc.train", traceback.format_exc(), error)


def test_a_python_exception_gives_its_type_and_message():
    error = ConfigError("trial t1: freeze_blocks must be <= transfer_blocks (3)\nsecond line")
    assert (
        reason_from_error_text(error_file(task_error(error)))
        == "ConfigError: trial t1: freeze_blocks must be <= transfer_blocks (3)"
    )
    assert reason_from_error_text(error_file(task_error(ValueError("bad value")))) == "ValueError: bad value"


def test_a_dead_worker_without_traceback_is_killed_or_out_of_memory():
    assert reason_from_error_text(error_file(ActorDiedError())) == WORKER_DIED
    assert reason_from_error_text("") == WORKER_DIED


def test_the_last_failure_counts():
    text = error_file(ActorDiedError(), task_error(TrialDivergedError("loss became nan at epoch 1")))
    assert reason_from_error_text(text) == "TrialDivergedError: loss became nan at epoch 1"
    text = error_file(task_error(ValueError("first try")), ActorDiedError())
    assert reason_from_error_text(text) == WORKER_DIED


# --- a real search with a trial that raises ------------------------------------------------------------


@pytest.mark.e2e
def test_a_raising_trial_shows_and_records_its_real_reason_and_the_search_goes_on(tmp_path, tracking_uri):
    space = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    space = copy.deepcopy(space)
    space["search"].update(
        {
            "trials": 2,
            "sampler": {"type": "random"},
            "scheduler": {"type": "fifo"},
            # lr far outside the range: the trial's loss becomes nan, it raises TrialDivergedError
            "points_to_evaluate": [{"lr": 1.0e20, "transfer_blocks": 9, "freeze_blocks": 6}],
        }
    )
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    result = run_nbtl(
        "search",
        str(path),
        "--data",
        "digits",
        "--name",
        "reasons",
        "--tracking-uri",
        tracking_uri,
        "--storage-path",
        str(tmp_path / "results"),
        cwd=tmp_path,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    failed_lines = [line for line in result.stdout.splitlines() if re.match(r"trial \S+ FAILED \[\d/2\]: ", line)]
    assert len(failed_lines) == 1, output[-4000:]
    assert "TrialDivergedError: " in failed_lines[0] and WORKER_DIED not in output, failed_lines[0]

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("reasons")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]  # the search went on
    failed = next(c for c in children if c.info.status == "FAILED")
    assert failed.data.params["lr"] == "1e+20"
    recorded = failed.data.tags["nbtl.error"]
    assert recorded.startswith("TrialDivergedError: ") and recorded in failed_lines[0]
    table = pd.read_csv(next((tmp_path / "results").glob("reasons*/results.csv")))
    assert table.loc[table["status"] == "FAILED", "error"].str.contains("TrialDivergedError: ").all()
