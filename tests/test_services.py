"""The services a search needs, checked in seconds before anything starts: the MLflow tracking store
(``--tracking-uri``) and the Ray head (``--address``); and a new SQLite store created by two processes at once.

Every refusal is one line on stderr and exit status 2, before any image is decoded and before Ray starts.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, run_nbtl
from nbtl.errors import ClusterError, TrackingStoreError
from nbtl.search.cluster import check_ray_address
from nbtl.tracking import check_tracking_uri
from servers import mlflow_server, ray_env, start_ray_node  # noqa: F401  (mlflow_server: a pytest fixture)

TINY = REPO / "search_spaces" / "tiny.yaml"
#: A refused service must end the command in seconds (a closed tracking port took 262 s, a non-Ray port
#: hung for minutes); generous for a loaded CI machine, where starting ``nbtl`` alone takes a few seconds.
FAST_S = 30


@pytest.fixture
def http_server():
    """A plain HTTP server (Python's, serving an empty folder), not MLflow; yields its URL."""
    folder = tempfile.mkdtemp()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_tcp_server():
    """A TCP server that accepts connections and never says a word (neither HTTP nor gRPC); yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


def refused_in_one_line(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, str, float]:
    """Run ``nbtl search tiny --data digits ARGS``; assert exit 2 with one line on stderr, no traceback, within
    :data:`FAST_S`, with no image decoded and no Ray started; return the line, stdout and the seconds it took."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    started = time.monotonic()
    result = run_nbtl(
        "search",
        str(TINY),
        "--data",
        "digits",
        "--storage-path",
        str(tmp_path / "results"),
        *args,
        cwd=tmp_path,
        env={"RAY_TMPDIR": str(ray_tmp), **(env or {})},
        timeout=300,
    )
    seconds = time.monotonic() - started
    ray_started = list(ray_tmp.glob("ray/session_*"))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert seconds < FAST_S, f"refused after {seconds:.0f}s: {lines[0]}"
    assert "decoded" not in result.stdout + result.stderr, "the images were decoded before the check"
    assert not ray_started, "Ray was started before the check"
    return lines[0], result.stdout, seconds


# --- the tracking store ---------------------------------------------------------------------------------------


def test_closed_tracking_port_is_refused_in_seconds_before_ray(tmp_path):
    line, _, _ = refused_in_one_line(tmp_path, "--tracking-uri", "http://127.0.0.1:1")
    assert "--tracking-uri http://127.0.0.1:1" in line and "mlflow server" in line, line


def test_a_server_that_is_not_mlflow_is_refused(tmp_path, http_server):
    line, _, _ = refused_in_one_line(tmp_path, "--tracking-uri", http_server)
    assert http_server in line and "not an MLflow tracking server" in line, line


def test_an_unknown_scheme_is_refused(tmp_path):
    line, _, _ = refused_in_one_line(tmp_path, "--tracking-uri", "foo://x")
    assert "foo://x" in line and "unknown scheme" in line and "sqlite:///" in line, line


def test_a_server_that_never_answers_is_refused_within_the_timeout(silent_tcp_server):
    uri = f"http://127.0.0.1:{silent_tcp_server}"
    started = time.monotonic()
    with pytest.raises(TrackingStoreError, match="no HTTP answer") as error:
        check_tracking_uri(uri)
    assert time.monotonic() - started < 15 and uri in str(error.value) and "\n" not in str(error.value)


def test_a_real_mlflow_server_is_accepted(mlflow_server):  # noqa: F811
    started = time.monotonic()
    assert check_tracking_uri(mlflow_server) == mlflow_server
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda tmp: tmp, "is a folder"),
        (
            lambda tmp: (tmp / "notes.db").write_text("plain text, not SQLite") and tmp / "notes.db",
            "not a SQLite database",
        ),
        (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "sub" / "mlflow.db", "is a file, not a folder"),
    ],
    ids=["folder", "not-sqlite", "under-a-file"],
)
def test_an_unusable_sqlite_path_is_refused(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(TrackingStoreError, match=fragment) as error:
        check_tracking_uri(f"sqlite:///{path}")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_new_sqlite_and_file_stores_are_accepted_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_tracking_uri("sqlite:///new/folder/mlflow.db") == f"sqlite:///{tmp_path / 'new/folder/mlflow.db'}"
    assert check_tracking_uri("file:mlruns") == (tmp_path / "mlruns").as_uri()
    assert not (tmp_path / "new").exists(), "a check must not create the store"


# --- the Ray head ---------------------------------------------------------------------------------------------


def test_a_port_that_is_not_a_ray_head_is_refused_before_the_data(tmp_path, silent_tcp_server):
    address = f"127.0.0.1:{silent_tcp_server}"
    line, _, _ = refused_in_one_line(
        tmp_path, "--address", address, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    assert f"--address {address}" in line and "not as a Ray head" in line, line
    assert not (tmp_path / "mlflow.db").exists()


def test_an_http_server_is_not_a_ray_head(http_server):
    address = http_server.removeprefix("http://")
    with pytest.raises(ClusterError, match="not as a Ray head"):
        check_ray_address(address)


def test_a_real_ray_head_is_accepted_and_a_missing_token_is_named(shared_ray):
    """In fresh processes, as ``nbtl`` runs: Ray reads its token settings when it is imported. The head is the test
    process's ``ray start --head`` (token authentication on)."""
    ray_head = shared_ray["RAY_ADDRESS"]
    code = (
        "import sys, time\nfrom nbtl.search.cluster import check_ray_address\nfrom nbtl.errors import NbtlError\n"
        "started = time.monotonic()\ntry:\n    print('OK', check_ray_address(sys.argv[1]))\n"
        "except NbtlError as error:\n    print('REFUSED', error)\nprint(time.monotonic() - started)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN_PATH"] = shared_ray["RAY_AUTH_TOKEN_PATH"]
    accepted = subprocess.run(
        [sys.executable, "-c", code, ray_head], env=env, capture_output=True, text=True, timeout=120
    )
    assert accepted.stdout.startswith(f"OK {ray_head}"), accepted.stdout + accepted.stderr[-3000:]
    # No token at hand: the client sends none, and the head (token authentication on) refuses it.
    env.update(RAY_AUTH_TOKEN_PATH=str(Path(tempfile.mkdtemp()) / "no_token"))
    env.pop("RAY_AUTH_TOKEN", None)
    refused = subprocess.run(
        [sys.executable, "-c", code, ray_head], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.stdout.startswith("REFUSED") and "token" in refused.stdout, refused.stdout + refused.stderr[-3000:]
    assert float(refused.stdout.splitlines()[-1]) < 15


# --- a new SQLite store, created by two processes at once -----------------------------------------------------

RACER = """
import sys, time
from pathlib import Path
from nbtl.tracking import tracking_client, resolve_tracking_uri

who, folder, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
for round_ in range(rounds):
    # A barrier: both processes open the round's new store at the same moment.
    (folder / f"ready-{round_}-{who}").touch()
    deadline = time.monotonic() + 120
    while len(list(folder.glob(f"ready-{round_}-*"))) < 2:
        if time.monotonic() > deadline:
            sys.exit(f"round {round_}: the other process never got there")
        time.sleep(0.001)
    client = tracking_client(resolve_tracking_uri(f"sqlite:///{folder / f'round{round_}' / 'mlflow.db'}"))
    client.create_experiment(f"search-{who}")
    print("round", round_, "ok", flush=True)
"""


def test_two_processes_creating_a_new_sqlite_store_both_finish(tmp_path):
    """MLflow creates a new store's tables and runs its migrations unguarded; without a lock one of two
    processes opening the same new store dies with an alembic or SQLite error (three rounds out of three here)."""
    rounds = 3
    logs = {who: open(tmp_path / f"racer-{who}.log", "w+") for who in "ab"}
    racers = {
        who: subprocess.Popen(
            [sys.executable, "-c", RACER, who, str(tmp_path), str(rounds)],
            cwd=tmp_path,
            stdout=logs[who],
            stderr=subprocess.STDOUT,
        )
        for who in "ab"
    }
    deadline = time.monotonic() + 300
    try:  # the first process to fail fails the test (the other would wait for it at the next round)
        while any(r.poll() is None for r in racers.values()) and time.monotonic() < deadline:
            if any(r.poll() not in (None, 0) for r in racers.values()):
                break
            time.sleep(0.2)
    finally:
        for racer in racers.values():
            if racer.poll() is None:
                racer.kill()
            racer.wait()
    output = {}
    for who, log in logs.items():
        log.seek(0)
        output[who] = log.read()[-3000:]
        log.close()
    assert all(r.returncode == 0 for r in racers.values()), "\n".join(
        f"process {who} (exit {racers[who].returncode}):\n{text}" for who, text in output.items()
    )
    from mlflow import MlflowClient

    for round_ in range(rounds):
        store = f"sqlite:///{tmp_path / f'round{round_}' / 'mlflow.db'}"
        names = {e.name for e in MlflowClient(tracking_uri=store).search_experiments()}
        assert {"search-a", "search-b"} <= names, (round_, names)


def test_a_test_ray_node_that_cannot_start_fails_at_once_with_its_log(tmp_path):
    """servers.start_ray_node tries a node again only when its raylet timed out registering; a node that cannot
    start at all (here a port that is not a number) fails the test on the first attempt, with the log's end."""
    attempts = []

    def flags():
        attempts.append(1)
        return ["start", "--head", "--port=not-a-port", "--disable-usage-stats"]

    with pytest.raises(pytest.fail.Exception) as failed:
        start_ray_node(flags, tmp_path / "ray_head.log", ray_env(tmp_path), "ray start --head")
    assert len(attempts) == 1
    assert "ray start --head did not come up (attempt 1)" in str(failed.value)
    assert "not-a-port" in str(failed.value)  # the log's end: Ray's own message about the port
