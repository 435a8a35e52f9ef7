"""Why a trial failed, in one line: the exception's type and message on the console and on the trial's MLflow
run; "killed or out of memory" only when its worker really died without a traceback."""

from __future__ import annotations

import traceback

from ray.exceptions import ActorDiedError, RayTaskError

from nbtl.errors import ConfigError, TrialDivergedError
from nbtl.search.session import WORKER_DIED, reason_from_error_text


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


# A real search with a trial that raises: tests/test_faults_resume.py::test_raising_trial_fails_and_killed_worker_is_retried
