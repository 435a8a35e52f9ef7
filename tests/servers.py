"""Real servers for end-to-end tests: an ``mlflow server`` on loopback.

``running_mlflow_server(directory)`` is a context manager; ``mlflow_server`` is the pytest fixture
built on it (import it into a test module or conftest.py to use it: ``from servers import mlflow_server``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Seconds a Ray node started by a test gets to end on SIGTERM before its group is killed: a test's node keeps
#: nothing worth a clean stop, and ``ray start --block`` took over 10 s to end on SIGTERM, every time.
RAY_GRACE = 2.0


def stop_group(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, the process group the server leads (uvicorn and its workers)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
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
def running_mlflow_server(
    directory: Path, startup_timeout: float = 120, admin_password: str | None = None
) -> Iterator[str]:
    """Start ``mlflow server`` on 127.0.0.1:<free port> with a SQLite backend store (``directory/mlflow.db``)
    and proxied artifact serving into ``directory/mlartifacts`` (clients upload and download artifacts
    over HTTP, ``mlflow-artifacts:/``); yield ``http://127.0.0.1:PORT`` once ``/health`` answers, and
    stop the server's whole process group on the way out, whatever happened.

    With ``admin_password`` the server runs MLflow's basic-auth app (``--app-name basic-auth``): its users in
    ``directory/basic_auth.db``, an ``admin`` with that password, everyone else refused."""
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
    auth = []
    if admin_password is not None:
        config = directory / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{directory / 'basic_auth.db'}\nadmin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(config),
            MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=os.urandom(16).hex(),  # CSRF protection of the auth app
        )
        auth = ["--app-name", "basic-auth"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                mlflow,
                "server",
                *auth,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{directory / 'mlflow.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(artifacts),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "no /health answer"
                pytest.fail(f"mlflow server did not come up ({state}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_group(process)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, artifacts served over HTTP) under ``tmp_path/mlflow_server``;
    yields its ``http://127.0.0.1:PORT`` URI."""
    with running_mlflow_server(tmp_path / "mlflow_server") as uri:
        yield uri


def _ray_node_ports() -> list[str]:
    """Ports every Ray node on this machine must not share with another node (or another Ray)."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]


def _wait_for_log(path: Path, text: str, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up:\n{path.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_ray_cluster(directory: Path, head_cpus: int = 1, worker_cpus: int = 1) -> Iterator[dict[str, str]]:
    """A real two-node Ray cluster on loopback: ``ray start --head`` (token authentication on, as Ray
    2.60 does by default; dashboard and job server on a free port) and a second node joined with
    ``ray start --address`` with its own resources. Yields ``{"address", "dashboard", "env"}``; stops
    both nodes' process groups (and only them) on the way out."""
    ray = shutil.which("ray", path=str(BIN)) or shutil.which("ray")
    if ray is None:
        pytest.fail("the `ray` command is not installed (pip install 'ray[default]')")
    directory.mkdir(parents=True, exist_ok=True)
    port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    # the cluster's own token (64 hex digits, as `ray get-auth-token --generate` writes), so the test needs no
    # ~/.ray/auth_token and leaves a user's alone; its clients read it through RAY_AUTH_TOKEN_PATH in ``env``
    token = directory / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    common = ["--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats", "--block"]
    processes = []
    try:
        head_log = directory / "ray_head.log"
        with open(head_log, "w") as log:
            processes.append(
                subprocess.Popen(
                    [
                        ray,
                        "start",
                        "--head",
                        f"--port={port}",
                        f"--num-cpus={head_cpus}",
                        '--resources={"head_node": 1}',
                        "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard_port}",
                        f"--ray-client-server-port={free_port()}",
                        *_ray_node_ports(),
                        *common,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=directory,
                    start_new_session=True,
                )
            )
        _wait_for_log(head_log, "Ray runtime started", processes[0], "ray start --head")
        worker_log = directory / "ray_worker.log"
        with open(worker_log, "w") as log:
            processes.append(
                subprocess.Popen(
                    [
                        ray,
                        "start",
                        f"--address=127.0.0.1:{port}",
                        f"--num-cpus={worker_cpus}",
                        '--resources={"worker_node": 1}',
                        *_ray_node_ports(),
                        *common,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=directory,
                    start_new_session=True,
                )
            )
        _wait_for_log(worker_log, "Ray runtime started", processes[1], "the second node (ray start --address)")
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env}
    finally:
        for process in reversed(processes):
            stop_group(process, grace=RAY_GRACE)


@contextlib.contextmanager
def running_ray_head(directory: Path, cpus: int = 2) -> Iterator[dict[str, str]]:
    """One real ``ray start --head`` on loopback (token authentication on, with its own token in ``directory``, as
    :func:`running_ray_cluster`'s head), ``cpus`` CPUs and no GPU. Yields ``{"address", "env"}``: ``env`` holds what
    an nbtl command needs to join it (``RAY_ADDRESS``, ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN_PATH``); stops the head's
    process group, and only it, on the way out."""
    ray = shutil.which("ray", path=str(BIN)) or shutil.which("ray")
    if ray is None:
        pytest.fail("the `ray` command is not installed (pip install 'ray[default]')")
    directory.mkdir(parents=True, exist_ok=True)
    token = directory / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    port, log_path = free_port(), directory / "ray_head.log"
    command = [ray, "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false"]
    command += [*_ray_node_ports(), "--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats", "--block"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory, start_new_session=True
        )
    try:
        _wait_for_log(log_path, "Ray runtime started", process, "ray start --head")
        address = f"127.0.0.1:{port}"
        yield {
            "address": address,
            "env": {"RAY_ADDRESS": address, **{k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}},
        }
    finally:
        stop_group(process, grace=RAY_GRACE)


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[dict[str, str]]:
    with running_ray_cluster(tmp_path / "ray_cluster") as cluster:
        yield cluster
