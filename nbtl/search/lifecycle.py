"""How a study runs and ends: :func:`fit_study`, the one ``Tuner.fit`` of a search and a zoo study, with Ctrl-C turned
into Ray Tune's graceful stop and reported as an interruption (with the command that continues a search) and a full
disk said in one line; and a finished search's trial checkpoints removed."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbtl.errors import disk_full_reason, one_line
from nbtl.ranking import trial_folder
from nbtl.search.session import ACTIVE, Session

logger = logging.getLogger(__name__)

#: Ray Tune's own SIGINT handler (``ray.tune.tune._setup_signal_catching``) makes ``Tuner.fit`` return
#: normally after Ctrl-C, as if the search had ended; with this set Ray Tune leaves SIGINT to nbtl.
_TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"

#: The folders Ray Tune writes a trial's checkpoints to (``checkpoint_000003``), inside the trial's folder.
CHECKPOINT_GLOB = "*/checkpoint_*"


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a search; its message is the command that continues it."""


class _FullDiskInOneLine(logging.Filter):
    """Ray's log records about a full disk (a trial's failure, a failed sync of the experiment) without their
    traceback: the message and the error in one line (the trial's ``error.txt`` keeps the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and disk_full_reason(error) is not None:
            text = str(error).strip().splitlines()
            full = next((line.strip() for line in reversed(text) if "[Errno 28]" in line or "No space" in line), "")
            record.msg = f"{record.getMessage().rstrip(': ')}: {full or one_line(error, with_type=True)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


@contextmanager
def full_disk_in_one_line() -> Iterator[None]:
    """Around ``Tuner.fit``: :class:`_FullDiskInOneLine` on the handlers of Ray's logger."""
    handlers = list(logging.getLogger("ray").handlers)
    one_line_filter = _FullDiskInOneLine()
    for handler in handlers:
        handler.addFilter(one_line_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(one_line_filter)


@dataclass
class Interrupt:
    requested: bool = False


@contextmanager
def graceful_ctrl_c() -> Iterator[Interrupt]:
    """Around ``Tuner.fit``: the first Ctrl-C asks Ray Tune for its graceful stop (SIGUSR1, which Ray Tune
    handles like its own SIGINT: the experiment state is saved for ``--resume``, the running trials are
    stopped, ``fit`` returns) and is recorded in the yielded :class:`Interrupt`, so the caller can say the
    search was interrupted; a second Ctrl-C, or one before Ray Tune is listening, raises KeyboardInterrupt."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield interrupt  # Ray Tune installs no handler either: Ctrl-C raises KeyboardInterrupt in fit
        return
    previous_int, previous_usr1 = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    previous_env = os.environ.get(_TUNE_SIGINT_ENV)

    def on_ctrl_c(signum, frame) -> None:
        # no printing here: the main thread may be half-way through a print of its own
        if interrupt.requested or signal.getsignal(signal.SIGUSR1) is previous_usr1:
            raise KeyboardInterrupt
        interrupt.requested = True
        signal.raise_signal(signal.SIGUSR1)

    os.environ[_TUNE_SIGINT_ENV] = "1"
    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGUSR1, previous_usr1)
        if previous_env is None:
            os.environ.pop(_TUNE_SIGINT_ENV, None)
        else:
            os.environ[_TUNE_SIGINT_ENV] = previous_env


@dataclass
class StudyFit:
    """How :func:`fit_study` ended."""

    results: Any  # Ray Tune's ResultGrid; None when the fit raised on a full disk
    interrupted: bool  # Ctrl-C asked Ray Tune to stop (the experiment state is saved)
    disk_full: str | None = None  # why, when a trial or Ray Tune found the disk full: the study stopped on it
    error: BaseException | None = None  # the exception ``fit`` raised on the full disk


def study_tuner(
    trainable,
    *,
    name: str,
    storage_path: str,
    callbacks: list,
    num_samples: int,
    max_concurrent: int | None,
    time_budget_s: float | None,
    max_failures: int,
    keep_checkpoints: int,
    reuse_actors: bool = True,
    search_alg=None,
    scheduler=None,
    param_space: dict[str, Any] | None = None,
):
    """Ray Tune's Tuner of a study as nbtl builds every one (a search's and a zoo study's): ``verbose=0`` (the
    callbacks say what happens), a trial's worker kept for the next trial (unless ``reuse_actors`` is false), the
    failures Ray Tune retries and the checkpoints it keeps. ``search_alg`` and ``scheduler`` for a search,
    ``param_space`` (a grid) for the zoo."""
    from ray import tune  # here, after nbtl.search.cluster.use_token_auth: Ray reads RAY_AUTH_MODE on first import

    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            time_budget_s=time_budget_s,
            # a trial's worker is kept for the next one (Ray Tune waits for its thread to end, else starts a new
            # one): a fresh worker spends seconds of CPU importing torch, MLflow and nbtl before its first step.
            # Ray Tune hands a kept worker to a trial whose own worker is still starting (and drops that one), so
            # on a cluster very short trials may all run where the first worker started (search.reuse_actors)
            reuse_actors=reuse_actors,
            # ``trial-<id>``: a trial that never reported is known by its folder (nbtl.ranking.trial_id_of)
            trial_dirname_creator=trial_folder,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    )


def fit_study(tuner, key: str, session: Session) -> StudyFit:
    """Run ``tuner.fit()`` as nbtl runs every study (a search, its ``--resume`` and a zoo study): ``session`` is
    registered under ``key`` (the experiment's path) while it runs, where the callbacks and the trainables' reporting
    find the live tracker; Ctrl-C is :func:`graceful_ctrl_c`; Ray's lines about a full disk are one line each
    (:func:`full_disk_in_one_line`), and a full disk, found by a trial (``session.disk_full``) or raised by ``fit``,
    is returned, not raised, so each study says it in its own words. Other errors propagate."""
    ACTIVE[key] = session
    try:
        with graceful_ctrl_c() as interrupt, full_disk_in_one_line():
            try:
                results = tuner.fit()
            except Exception as error:
                reason = session.disk_full or disk_full_reason(error)
                if reason is None:
                    raise
                return StudyFit(None, interrupt.requested, reason, error)
    finally:
        ACTIVE.pop(key, None)
    return StudyFit(results, interrupt.requested, session.disk_full)


def resume_command(experiment_dir: str, storage_path: str | None, address: str | None, tracking_uri: str | None) -> str:
    """``nbtl search --resume NAME`` with the options the resumed search needs to find the same state."""
    words = ["nbtl", "search", "--resume", experiment_dir]
    for flag, value in (("--storage-path", storage_path), ("--address", address), ("--tracking-uri", tracking_uri)):
        if value:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


@contextmanager
def tell_how_to_resume(say, command: str) -> Iterator[None]:
    """Say how to continue the search when Ctrl-C ends the block."""
    try:
        yield
    except KeyboardInterrupt:
        say(
            f"search interrupted: its MLflow runs are KILLED, its finished trials and state are kept; "
            f"continue it with: {command}"
        )
        raise


def remove_trial_checkpoints(experiment_path: Path) -> int:
    """Delete the trial checkpoints of a finished search (only ``--resume`` reads them); returns the bytes freed."""
    freed = 0
    for folder in experiment_path.glob(CHECKPOINT_GLOB):
        if folder.is_dir():
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder, ignore_errors=True)
    return freed
