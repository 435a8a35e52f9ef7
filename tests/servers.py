"""Real servers for end-to-end tests: an ``mlflow server`` on loopback.

``running_mlflow_server(directory)`` is a context manager; ``mlflow_server`` is the pytest fixture
built on it (import it into a test module or conftest.py to use it: ``from servers import mlflow_server``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group the server leads (uvicorn and its workers)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # workers that outlived their leader
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_mlflow_server(directory: Path, startup_timeout: float = 120) -> Iterator[str]:
    """Start ``mlflow server`` on 127.0.0.1:<free port> with a SQLite backend store (``directory/mlflow.db``)
    and proxied artifact serving into ``directory/mlartifacts`` (clients upload and download artifacts
    over HTTP, ``mlflow-artifacts:/``); yield ``http://127.0.0.1:PORT`` once ``/health`` answers, and
    stop the server's whole process group on the way out, whatever happened."""
    mlflow = shutil.which("mlflow", path=str(BIN)) or shutil.which("mlflow")
    if mlflow is None:
        pytest.fail("the `mlflow` command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = directory / "mlartifacts"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = directory / "mlflow_server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # No UI/usage telemetry, and no huey job runners (GenAI jobs: half a dozen extra processes and a
    # /dev/shm folder that nothing the tracking API or the UI's run pages needs).
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(artifacts)],
            stdout=log, stderr=subprocess.STDOUT, cwd=directory, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "no /health answer"
                pytest.fail(f"mlflow server did not come up ({state}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        _stop_group(process)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, artifacts served over HTTP) under ``tmp_path/mlflow_server``;
    yields its ``http://127.0.0.1:PORT`` URI."""
    with running_mlflow_server(tmp_path / "mlflow_server") as uri:
        yield uri
