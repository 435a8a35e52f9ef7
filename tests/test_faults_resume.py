"""Faults and resume on real Ray and a real MLflow store: a trial that raises is recorded as failed and
the search goes on; a trial whose worker process is killed is retried from its checkpoint; a search
whose driver is killed is continued with ``nbtl search --resume`` without duplicating MLflow runs.

The two scenarios are independent searches (each its own folder and store; the killed driver's on an embedded Ray
whose processes must end with it, the other on the test process's Ray head, ``conftest.shared_ray``) that spend most of
their time starting processes, so they run side by side (``scenarios``); each test asserts on its own. The
extra load only slows their epochs, which widens the windows they kill in."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from mlflow import MlflowClient

from conftest import ONE_THREAD, assert_no_run_left_running, nbtl_command, new_store, selected_tests
from nbtl.search.session import WORKER_DIED
from nbtl.tracking import search_experiment

pytestmark = pytest.mark.e2e

SPACE = {
    "name": "faults",
    "data": {"image_size": 32, "per_class": 40, "val_fraction": 0.2, "test_fraction": 0.2},
    "search": {
        "trials": 4,
        "max_concurrent": 2,
        "seed": 0,
        "max_failures": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "sampler": {"type": "random"},
        "scheduler": {"type": "fifo"},
        "start_points": [],  # Optuna's proposals from the first trial (no fit measures to compute first)
    },
    "parameters": {
        "backbone": "efficientnet_lite0",
        "transfer_blocks": 9,
        "freeze_blocks": {"low": 6, "high": 8},
        "lr": {"low": 0.005, "high": 0.05, "log": True},
        "head": "linear",
        "epochs": 4,
        "batch_size": 32,
    },
}


def write_space(tmp_path: Path, **search) -> Path:
    document = copy.deepcopy(SPACE)
    document["search"].update(search)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_search(tmp_path: Path, tracking_uri: str, *args: str, ray: dict[str, str] | None = None) -> subprocess.Popen:
    """``nbtl search ARGS`` in its own session, on an embedded Ray, or joining the head whose environment ``ray``
    holds (:func:`conftest.shared_ray`)."""
    log = open(tmp_path / "search.log", "a")
    return subprocess.Popen(
        nbtl_command("search", *args, "--tracking-uri", tracking_uri, "--storage-path", str(tmp_path / "results")),
        cwd=tmp_path,
        # one thread: the other scenario's search shares the CPUs (its trials have one each)
        env={**os.environ, **ONE_THREAD, **(ray or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def runs(tracking_uri: str, name: str = "faults"):
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(search_experiment(name))
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def wait_for(condition, timeout: float, what: str, log: Path, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; search log:\n{log.read_text()[-4000:]}")


def trial_runs(all_runs):
    return [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]


def raise_and_kill_a_worker(tmp_path: Path, tracking_uri: str, ray: dict[str, str]) -> dict:
    """A search whose first trial diverges, and one of whose healthy trials has its Ray worker killed mid-way: on
    the test process's Ray head (``ray``), whose other jobs a killed worker must not touch either."""
    # The first trial Optuna proposes diverges (NaN loss): it raises TrialDivergedError.
    space = write_space(tmp_path, points_to_evaluate=[{"lr": 1.0e20, "freeze_blocks": 6}])
    process = start_search(tmp_path, tracking_uri, str(space), "--data", "digits", ray=ray)
    log = tmp_path / "search.log"
    try:

        def healthy_trial_mid_way():
            for run in trial_runs(runs(tracking_uri)):
                if (
                    run.info.status == "RUNNING"
                    and run.data.params.get("lr") != "1e+20"
                    and 1 <= run.data.metrics.get("epoch", 0) < 3
                ):
                    return run
            return None

        victim = wait_for(healthy_trial_mid_way, 300, "a trial in its first epochs", log, process)
        os.kill(int(victim.data.tags["nbtl.pid"]), signal.SIGKILL)  # the Ray worker running that trial
        assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert_no_run_left_running(tracking_uri)
    return {"victim": victim, "log": log}


def kill_the_driver_and_resume(tmp_path: Path, tracking_uri: str, ray: dict[str, str]) -> dict:
    """A search whose driver is SIGKILLed in a trial's second epoch (its Ray processes must end with it), then
    ``nbtl search --resume``. On an embedded Ray (its processes must end with the driver): ``ray`` is not used."""
    space = write_space(tmp_path, trials=3)  # two running when the driver is killed, one still to come
    process = start_search(tmp_path, tracking_uri, str(space), "--data", "digits")
    log = tmp_path / "search.log"
    try:
        wait_for(
            lambda: any(r.data.metrics.get("epoch", 0) >= 2 for r in trial_runs(runs(tracking_uri))),
            300,
            "a trial's second epoch",
            log,
            process,
        )
        os.kill(process.pid, signal.SIGKILL)  # the driver alone: Ray's processes must end with it
        process.wait(timeout=30)
        # the embedded Ray's processes (agents, workers) end within seconds: nothing of the session is left
        deadline = time.monotonic() + 30
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        orphans = session_processes(process.pid)
    finally:
        if session_processes(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    before = trial_runs(runs(tracking_uri))
    assert any(r.info.status == "RUNNING" for r in before), "the kill came too late to test resume"

    resumed = start_search(tmp_path, tracking_uri, "--resume", "faults")
    try:
        assert resumed.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    assert_no_run_left_running(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    steps = {
        r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        for r in trial_runs(runs(tracking_uri))
    }
    return {"before": before, "log": log, "orphans": orphans, "steps": steps}


def session_processes(session: int) -> dict[int, str]:
    """The live processes of session ``session`` (what a search started with ``start_new_session`` left): pid -> name."""
    found = {}
    for process in psutil.process_iter(["name", "status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                found[process.pid] = process.info["name"]
        except (ProcessLookupError, PermissionError):
            continue
    return found


RAISING, RESUMED = (
    "test_raising_trial_fails_and_killed_worker_is_retried",
    "test_killed_driver_resumes_without_duplicate_runs",
)
SCENARIOS = {RAISING: raise_and_kill_a_worker, RESUMED: kill_the_driver_and_resume}


@pytest.fixture(scope="module")
def scenarios(ahead, tmp_path_factory, request, shared_ray):
    """The scenarios of the tests this session runs, started together; ``scenarios(test)`` waits for that
    test's and gives what it saw, its folder and its tracking URI."""
    folders = {}
    for test in sorted(selected_tests(request) & set(SCENARIOS)):
        folder = folders[test] = tmp_path_factory.mktemp("faults")
        ahead.call(test, SCENARIOS[test], folder, new_store(folder), shared_ray)

    def result(test: str) -> tuple[dict, Path, str]:
        return ahead[test], folders[test], f"sqlite:///{folders[test] / 'mlflow.db'}"

    return result


def test_raising_trial_fails_and_killed_worker_is_retried(scenarios):
    seen, tmp_path, tracking_uri = scenarios(RAISING)
    victim, log = seen["victim"], seen["log"]
    children = trial_runs(runs(tracking_uri))
    assert len(children) == 4 and len({c.data.tags["nbtl.trial_id"] for c in children}) == 4
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.params["lr"] == "1e+20"
    assert "TrialDivergedError" in failed[0].data.tags["nbtl.error"]
    retried = next(c for c in children if c.info.run_id == victim.info.run_id)
    assert retried.info.status == "FINISHED" and retried.data.tags["nbtl.attempt"] == "2"
    assert retried.data.tags["nbtl.pid"] != victim.data.tags["nbtl.pid"]
    assert retried.data.metrics["epoch"] == 4
    retry_lines = [line for line in log.read_text().splitlines() if "retrying from its last checkpoint" in line]
    assert any(victim.data.tags["nbtl.trial_id"] in line and "attempt 2" in line for line in retry_lines), retry_lines
    assert sum(c.info.status == "FINISHED" for c in children) == 3
    table = pd.read_csv(next((tmp_path / "results").glob("faults*/results.csv")))
    assert sorted(table["status"]) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    assert "Best trial:" in log.read_text()
    # the real reason, one line, on the console, the run and in results.csv (not "killed or out of memory")
    recorded = failed[0].data.tags["nbtl.error"]
    assert recorded.startswith("TrialDivergedError: ") and "\n" not in recorded
    failed_lines = [line for line in log.read_text().splitlines() if re.match(r"trial \S+ FAILED \[\d/4\]: ", line)]
    assert len(failed_lines) == 1 and recorded in failed_lines[0] and WORKER_DIED not in failed_lines[0]
    assert table.loc[table["status"] == "FAILED", "error"].str.startswith("TrialDivergedError: ").all()


def test_killed_driver_resumes_without_duplicate_runs(scenarios):
    seen, tmp_path, tracking_uri = scenarios(RESUMED)
    before, log = seen["before"], seen["log"]
    assert seen["orphans"] == {}, f"processes left behind by the killed driver: {seen['orphans']}"
    # no epoch logged twice: a resumed trial neither re-runs nor re-logs an epoch its run already holds
    assert all(len(steps) == len(set(steps)) for steps in seen["steps"].values()), seen["steps"]
    all_runs = runs(tracking_uri)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = trial_runs(all_runs)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["nbtl.resumed"] == "1"
    assert len(children) == 3 and len({c.data.tags["nbtl.trial_id"] for c in children}) == 3
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert sum(c.info.status == "FINISHED" for c in children) >= 2
    # Runs that existed before the kill were continued, not duplicated.
    assert {r.info.run_id for r in before} <= {c.info.run_id for c in children}
    table = pd.read_csv(next((tmp_path / "results").glob("faults*/results.csv")))
    assert len(table) == 3
    assert "resuming search 'faults'" in log.read_text()
