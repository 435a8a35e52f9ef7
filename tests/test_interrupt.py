"""Ctrl-C on a real ``nbtl search`` (a real SIGINT to its process group, as a terminal sends it) and on a
real ``nbtl train``: the command says it was interrupted, exits 130, and leaves its MLflow runs KILLED —
not FINISHED as if complete, not STOPPED (the word for an ASHA stop) — while what finished is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import ONE_THREAD, assert_no_run_left_running, nbtl_command, new_store, selected_tests
from nbtl.tracking import search_experiment

pytestmark = pytest.mark.e2e

#: One trial of 1 epoch that finishes at once, one of 200 that the interrupt cuts off, a third still to come
#: (every block trains: about a second an epoch, so the long one cannot end before the interrupt lands).
SPACE = {
    "name": "interrupt",
    "data": {"image_size": 32, "per_class": 20, "val_fraction": 0.2, "test_fraction": 0.2},
    "search": {
        "trials": 3,
        "max_concurrent": 2,
        "seed": 0,
        "resources": {"cpu": 1, "gpu": 0},
        "sampler": {"type": "random"},
        "scheduler": {"type": "fifo"},
        "start_points": [],
        "points_to_evaluate": [{"epochs": 1}, {"epochs": 200}],
    },
    "parameters": {
        "backbone": "efficientnet_lite0",
        "transfer_blocks": 9,
        "freeze_blocks": 0,
        "lr": 0.01,
        "head": "linear",
        "epochs": {"choices": [1, 200]},
        "batch_size": 32,
    },
}


def _runs(uri: str, name: str, experiment_name: str | None = None):
    """The runs of the search ``name`` (or of the MLflow experiment ``experiment_name``)."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name or search_experiment(name))
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _wait(condition, process: subprocess.Popen, log: Path, what: str, timeout: float = 400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the command ended (exit {process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def _sigint_default() -> None:
    """In the child: Ctrl-C as at a terminal. A command started in the background by a non-interactive shell
    (`bash .ci/run &`, nohup) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(process: subprocess.Popen, log: Path) -> int:
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    try:
        return process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the command did not end within 120 s of Ctrl-C:\n{log.read_text()[-4000:]}")


def test_ctrl_c_on_a_search_kills_its_runs_and_says_how_to_resume(tmp_path, tracking_uri):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    results, log = tmp_path / "results", tmp_path / "search.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            nbtl_command(
                "search", str(space), "--data", "digits", "--tracking-uri", tracking_uri, "--storage-path", str(results)
            ),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_sigint_default,
        )
    try:

        def one_done_one_running():
            trials = [r for r in _runs(tracking_uri, "interrupt") if r.data.tags.get("nbtl.role") == "trial"]
            done = [r for r in trials if r.info.status == "FINISHED"]
            running = [r for r in trials if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) >= 1]
            return done and running

        _wait(one_done_one_running, process, log, "a finished trial and a running one")
        code = _interrupt(process, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 130, text[-4000:]
    assert "interrupted" in text and "Best trial" not in text, text[-4000:]
    assert f"nbtl search --resume interrupt --storage-path {results}" in text, text[-4000:]

    runs = _runs(tracking_uri, "interrupt")
    parent = next(r for r in runs if r.data.tags.get("nbtl.role") == "search")
    trials = [r for r in runs if r.data.tags.get("nbtl.role") == "trial"]
    assert parent.info.status == "KILLED"
    resume = parent.data.tags["nbtl.resume_command"]  # what the MLflow UI shows of an unfinished search
    assert resume.startswith("nbtl search --resume interrupt --storage-path ") and resume in text, resume
    assert not [r for r in trials if r.info.status == "RUNNING"]
    finished = [r for r in trials if r.info.status == "FINISHED"]
    # a run FINISHED only when its trial ran all its epochs; the cut-off one is KILLED, not "stopped early"
    assert finished and all(r.data.metrics["epoch"] == int(r.data.params["epochs"]) for r in finished)
    assert not [r for r in trials if r.data.tags.get("nbtl.stopped_early")]
    # the 200-epoch trial the interrupt cut off mid-way; the third trial (200 epochs too) as well if it had
    # started once the first finished (timing: under load it often has)
    cut_off = [r for r in trials if r.data.params["epochs"] == "200"]
    assert cut_off and all(r.info.status == "KILLED" for r in cut_off), [r.info.status for r in cut_off]
    cut_off.sort(key=lambda r: r.data.metrics.get("epoch", 0), reverse=True)
    assert cut_off[0].data.metrics["epoch"] >= 1 and "interrupted" in cut_off[0].data.tags["nbtl.error"]

    # what resume needs is kept: the state, the finished trial's folder, the cut-off trial's checkpoint
    experiment = results / "interrupt"
    assert (experiment / "nbtl_search.json").exists() and not (experiment / "results.csv").exists()
    done_id = finished[0].data.tags["nbtl.trial_id"]
    assert (next(experiment.glob(f"*{done_id}*")) / "progress.csv").exists()
    cut_id = cut_off[0].data.tags["nbtl.trial_id"]
    assert list(experiment.glob(f"*{cut_id}*/checkpoint_*")), "the cut-off trial's checkpoint is gone"


@pytest.fixture(scope="module", autouse=True)
def long_training(tmp_path_factory, request):
    """The ``nbtl train`` that ``test_ctrl_c_on_nbtl_train_kills_its_run`` interrupts, started with the module:
    its start-up and first epoch overlap the search test before it (500 epochs: it is still training when its
    own test comes). Yields (process, log, tracking URI); a process still running at the end is killed."""
    if "test_ctrl_c_on_nbtl_train_kills_its_run" not in selected_tests(request):
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("train")
    tracking_uri = new_store(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backbone": "efficientnet_lite0",
                "transfer_blocks": 9,
                "freeze_blocks": 0,  # every block trains: seconds an epoch (a frozen prefix is cached: too fast)
                "lr": 0.01,
                "head": "linear",
                "epochs": 500,
                "batch_size": 32,
            }
        )
    )
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            nbtl_command(
                "train",
                str(config),
                "--data",
                "digits",
                "--image-size",
                "32",
                "--per-class",
                "20",
                "--tracking-uri",
                tracking_uri,
                "--name",
                "cut",
                "--no-floor",
            ),
            cwd=tmp_path,
            env={**os.environ, **ONE_THREAD},  # it shares the CPUs with the search test
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_sigint_default,
        )
    try:
        yield process, log, tracking_uri
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_ctrl_c_on_nbtl_train_kills_its_run(long_training):
    process, log, tracking_uri = long_training
    try:
        _wait(lambda: "epoch 1:" in log.read_text(), process, log, "the first epoch", timeout=300)
        code = _interrupt(process, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 130, log.read_text()[-4000:]
    runs = _runs(tracking_uri, "cut", experiment_name="cut")  # nbtl train --name: the experiment's name
    assert [r.info.status for r in runs] == ["KILLED"], log.read_text()[-4000:]
    assert_no_run_left_running(tracking_uri)
