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
from collections.abc import Callable, Iterator
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


def _came_up(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


#: What ``ray start`` prints when its raylet did not register with the GCS in time: Ray 2.60 waits 30 s, a number
#: written into ``ray/_private/node.py``, and on 2 busy CPUs it can take longer (CI at 045cfc2, while the other test
#: process started a search's embedded Ray).
STARTUP_TIMEOUT = "timed out during startup"
#: How many times a node that timed out during startup is started again, each time on fresh ports.
NODE_ATTEMPTS = 3


def start_ray_node(flags: Callable[[], list[str]], log_path: Path, env: dict[str, str], what: str) -> subprocess.Popen:
    """``ray <flags()> --block`` in its own process group (``stop_group`` ends it and all it spawned, nothing else),
    once its log says "Ray runtime started". A start that timed out registering its raylet (:data:`STARTUP_TIMEOUT`)
    is stopped and made again with new ``flags()`` (fresh ports), up to :data:`NODE_ATTEMPTS` times; any other
    failure fails the test with the log's end."""
    ray = shutil.which("ray", path=str(BIN)) or shutil.which("ray")
    if ray is None:
        pytest.fail("the `ray` command is not installed (pip install 'ray[default]')")
    attempt = 0
    while True:
        attempt += 1
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [ray, *flags(), "--block"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_path.parent,
                start_new_session=True,
            )
        if _came_up(log_path, "Ray runtime started", process):
            return process
        stop_group(process, grace=RAY_GRACE)
        if STARTUP_TIMEOUT not in log_path.read_text() or attempt == NODE_ATTEMPTS:
            pytest.fail(f"{what} did not come up (attempt {attempt}):\n{log_path.read_text()[-3000:]}")


def ray_env(directory: Path) -> dict[str, str]:
    """The environment of a test's Ray nodes and their clients: its own token (64 hex digits, as ``ray get-auth-token
    --generate`` writes) in ``directory``, named by ``RAY_AUTH_TOKEN_PATH``, so a test needs no ``~/.ray/auth_token``
    and leaves a user's alone; no ``RAY_ADDRESS`` or ``RAY_AUTH_TOKEN`` of the caller's."""
    directory.mkdir(parents=True, exist_ok=True)
    token = directory / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    # A head prestarts a worker per CPU when its first driver connects, which no test uses (Tune starts its own):
    # 10 such idle workers took 24 s of CPU in a CI run (benchmarks/ci_cpu.py). nbtl's embedded Ray turns it off too.
    env["RAY_prestart_worker_first_driver"] = "0"
    return env


#: Every node of a test's Ray: on loopback, no GPU, no usage report.
NODE_FLAGS = ["--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats"]


def head_flags(port: list[int], cpus: int, *extra: str) -> Callable[[], list[str]]:
    """``flags`` of :func:`start_ray_node` for a head on a fresh port each attempt, written into ``port[0]``."""

    def flags() -> list[str]:
        port[:] = [free_port()]
        return ["start", "--head", f"--port={port[0]}", f"--num-cpus={cpus}", *extra, *_ray_node_ports(), *NODE_FLAGS]

    return flags


@contextlib.contextmanager
def running_ray_cluster(directory: Path, head_cpus: int = 1, worker_cpus: int = 1) -> Iterator[dict[str, str]]:
    """A real two-node Ray cluster on loopback: ``ray start --head`` (token authentication on, as Ray
    2.60 does by default; dashboard and job server on a free port) and a second node joined with
    ``ray start --address`` with its own resources. Yields ``{"address", "dashboard", "env"}``; stops
    both nodes' process groups (and only them) on the way out."""
    env = ray_env(directory)
    port: list[int] = []
    dashboard_port = free_port()
    dashboard = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    head = head_flags(port, head_cpus, '--resources={"head_node": 1}', *dashboard)
    processes = []
    try:
        processes.append(
            start_ray_node(
                lambda: [*head(), f"--ray-client-server-port={free_port()}"],
                directory / "ray_head.log",
                env,
                "ray start --head",
            )
        )
        worker = ["start", f"--address=127.0.0.1:{port[0]}", f"--num-cpus={worker_cpus}"]
        worker += ['--resources={"worker_node": 1}', *NODE_FLAGS]
        processes.append(
            start_ray_node(
                lambda: [*worker, *_ray_node_ports()],
                directory / "ray_worker.log",
                env,
                "the second node (ray start --address)",
            )
        )
        yield {"address": f"127.0.0.1:{port[0]}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env}
    finally:
        for process in reversed(processes):
            stop_group(process, grace=RAY_GRACE)


@contextlib.contextmanager
def running_ray_head(directory: Path, cpus: int = 2) -> Iterator[dict[str, str]]:
    """One real ``ray start --head`` on loopback (token authentication on, with its own token in ``directory``, as
    :func:`running_ray_cluster`'s head), ``cpus`` CPUs and no GPU. Yields ``{"address", "env"}``: ``env`` holds what
    an nbtl command needs to join it (``RAY_ADDRESS``, ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN_PATH``); stops the head's
    process group, and only it, on the way out."""
    env = ray_env(directory)
    port: list[int] = []
    flags = head_flags(port, cpus, "--include-dashboard=false")
    process = start_ray_node(flags, directory / "ray_head.log", env, "ray start --head")
    try:
        address = f"127.0.0.1:{port[0]}"
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
