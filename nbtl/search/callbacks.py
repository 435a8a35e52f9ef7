"""Driver-side Ray Tune callback: progress lines, and closing each trial's MLflow run."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from ray.tune import Callback

from nbtl.data.images import trim_heap
from nbtl.errors import is_disk_full_text
from nbtl.search.session import ACTIVE, Session, error_reason
from nbtl.tracking import SOURCE_TAG, STOP_REASON_TAG, SearchTracker, trial_run_name


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


#: Seconds between two refreshes of the live status line.
STATUS_EVERY_S = 1.0
#: Seconds between two trims of the driver's C heap while trials run (nbtl.data.images.trim_heap, about 10 ms): its
#: Ray and gRPC threads free as much as they allocate, and the freed pages stayed (issue 18: a driver at 665 MB after
#: its setup's trim held 1,017 MB two minutes into the trials, 324 MB of it in use).
TRIM_EVERY_S = 30.0


class SearchCallback(Callback):
    """Prints a line per epoch and per finished trial, and makes sure no trial's run stays RUNNING:
    a trial that finished, was stopped early by the scheduler, or whose worker died is closed here.
    """

    def __init__(
        self,
        key: str,
        total_trials: int,
        max_epochs: int,
        budget: float | None = None,
        started: float | None = None,
        max_failures: int | None = None,
        starts: list[tuple[str, dict[str, Any]]] | None = None,
        scheduler_stops: bool = True,
        expected: int | None = None,
    ):
        self.key = key
        self.expected = expected  # without a trial count: about how many trials the budget affords
        self.starts = list(starts or [])  # (label, point): the start points, run first (nbtl.search.start)
        self.sources: dict[str, str] = {}  # trial id -> nbtl.source: a start point's label, or "sampler"
        self.stop_reasons: dict[str, str] = {}  # trial id -> nbtl.stop_reason (STOP_REASONS)
        self.scheduler_stops = scheduler_stops  # ASHA: a trial ended before its last epoch was stopped by it
        self.max_failures = max_failures  # retries per trial (FailureConfig), for the retry line
        self.total = total_trials
        self.max_epochs = max_epochs
        self.budget = budget
        self.started = time.time() if started is None else started  # wall clock (epoch seconds) of the search's start
        self.finished = 0
        self.best = float("-inf")
        self.run_ids: dict[str, str] = {}
        self.completed: list[str] = []
        self.finished_at: dict[str, float] = {}

    def _total(self) -> str:
        """The trials to run: the count, ``~N`` (what the time budget affords, estimated), or ``?``."""
        if self.total > 0:
            return str(self.total)
        return f"~{max(self.expected, self.finished)}" if self.expected else "?"

    def elapsed(self) -> float:
        return time.time() - self.started

    def clock(self) -> str:
        """``4m12s spent, 10m48s left`` (of the time budget), or ``4m12s spent`` without one."""
        spent = self.elapsed()
        text = f"{_minutes(spent)} spent"
        if self.budget:
            text += f", {_minutes(max(0.0, self.budget - spent))} left"
        return text

    def _session(self) -> Session:
        if self.key not in ACTIVE and len(ACTIVE) == 1:  # the experiment folder was moved before resuming
            self.key = next(iter(ACTIVE))
        return ACTIVE[self.key]

    def setup(self, **info: Any) -> None:
        self._session().callback = self

    @property
    def tracker(self) -> SearchTracker:
        return self._session().tracker

    def print(self, line: str) -> None:
        self._session().print(line)

    def get_state(self) -> dict[str, Any]:
        """Saved with the experiment by Ray Tune and given back by :meth:`set_state` on restore."""
        return {
            "finished": self.finished,
            "best": self.best,
            "run_ids": dict(self.run_ids),
            "completed": list(self.completed),
            "finished_at": dict(self.finished_at),
            "sources": dict(self.sources),
            "stop_reasons": dict(self.stop_reasons),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.finished, self.best = state["finished"], state["best"]
        self.run_ids, self.completed = dict(state["run_ids"]), list(state["completed"])
        self.finished_at = dict(state.get("finished_at", {}))
        self.sources = dict(state.get("sources", {}))
        self.stop_reasons = dict(state.get("stop_reasons", {}))

    def _name(self, trial) -> str:
        return str(trial.trial_id)

    def _count_finished(self, trial) -> None:
        """One more trial done, once per trial: one that failed on a full disk and ran again after ``--resume``
        is not counted twice."""
        if trial.trial_id not in self.completed:
            self.finished += 1
            self.completed.append(trial.trial_id)
        self.finished_at[trial.trial_id] = round(self.elapsed(), 2)

    def source(self, trial) -> str:
        """Where ``trial``'s config came from (tag ``nbtl.source``): the label of the start point it is (``probe``,
        ``conventional``, ``recommend-1``, ``warm-start-1``), the first not yet taken whose every key it has, or
        ``sampler`` (Optuna, with the learned prior where the space has one)."""
        if trial.trial_id not in self.sources:
            taken = set(self.sources.values())
            config = trial.config or {}
            self.sources[trial.trial_id] = next(
                (
                    label
                    for label, point in getattr(self, "starts", [])  # a callback pickled by an older nbtl: none
                    if label not in taken and all(config.get(k) == v for k, v in point.items())
                ),
                "sampler",
            )
        return self.sources[trial.trial_id]

    def labels(self, trial, stop_reason: str) -> dict[str, str]:
        """The tags that say where ``trial`` came from and why it ended; ``stop_reason`` is remembered for the
        results table."""
        self.stop_reasons[trial.trial_id] = stop_reason
        return {SOURCE_TAG: self.source(trial), STOP_REASON_TAG: stop_reason}

    def _stopped_by(self) -> str:
        """Why a trial ended before its last epoch, not by its own patience: the scheduler, if it stops trials
        (ASHA; ``getattr``: a callback pickled by an older nbtl has no such attribute), else the time budget."""
        return "asha" if getattr(self, "scheduler_stops", True) else "time_budget"

    def status_line(self, trials: list) -> str:
        """``trials: 3 done, 2 running, ~9 left | best val_accuracy 0.8125 | 4m12s spent, 10m48s left``: what the
        live status line shows (trials left: of the count, or ``~`` of what the time budget affords)."""
        running = sum(1 for t in trials if t.status == "RUNNING")
        done = self.finished
        if self.total > 0:
            left = f", {max(0, self.total - done - running)} left"
        elif self.expected:
            left = f", ~{max(0, self.expected - done - running)} left"
        else:
            left = ""
        best = f"best val_accuracy {self.best:.4f}" if self.best > float("-inf") else "no epoch yet"
        return f"trials: {done} done, {running} running{left} | {best} | {self.clock()}"

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Refresh the live status line (a terminal's), at most every :data:`STATUS_EVERY_S`; hand the driver's free
        heap pages back every :data:`TRIM_EVERY_S`."""
        now = time.monotonic()
        if now - getattr(self, "_trimmed_at", float("-inf")) >= TRIM_EVERY_S:
            self._trimmed_at = now
            trim_heap(collect=False)
        status = self._session().status
        if status is None or now - getattr(self, "_status_at", float("-inf")) < STATUS_EVERY_S:
            return
        self._status_at = now
        status(self.status_line(trials))

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.source(trial)
        config = trial.config
        summary = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())
        self.print(f"trial {self._name(trial)} started: {summary}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        best = result.get("best_val_accuracy", float("nan"))
        self.best = max(self.best, best)
        self.print(
            f"trial {self._name(trial)} epoch {int(result.get('epoch', 0))}: "
            f"val_accuracy={result.get('val_accuracy', float('nan')):.4f} "
            f"val_loss={result.get('val_loss', float('nan')):.4f}  (search best {self.best:.4f}; {self.clock()})"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._count_finished(trial)
        epochs = int(trial.last_result.get("epoch", 0)) if trial.last_result else 0
        planned = int(trial.config.get("epochs", self.max_epochs))
        last = trial.last_result or {}
        patience = bool(last.get("early_stopped"))  # the trial's own early stopping (patience), not the scheduler
        stopped = 0 < epochs < planned and not patience
        self.run_ids[trial.trial_id] = self.tracker.close_trial(
            trial.trial_id,
            trial_run_name(trial.trial_id, trial.config),
            trial.config,
            "FINISHED",
            tags={
                **({"nbtl.stopped_early": "true"} if stopped else {}),
                **self.labels(trial, "patience" if patience else (self._stopped_by() if stopped else "finished")),
            },
        )
        if stopped:
            note = f" (stopped early by the scheduler after {epochs} of {planned} epochs)"
        elif patience:
            note = f" (early stopping: no better val_accuracy, ended at epoch {epochs} of {planned})"
        else:
            note = ""
        best = trial.last_result.get("best_val_accuracy", float("nan")) if trial.last_result else float("nan")
        total = self._total()
        self.print(
            f"trial {self._name(trial)} finished [{self.finished}/{total}]: best_val_accuracy={best:.4f}{note}"
            f"  ({self.clock()})"
        )

    def stop_on_full_disk(self, trial, reason: str) -> bool:
        """When ``reason`` (why ``trial`` failed) is a full disk, every trial after it would fail the same way:
        stop the search as Ctrl-C does (SIGUSR1, Ray Tune's graceful stop, which keeps the experiment for
        ``--resume``) and note it in the session, so the driver ends in one line. Whether it stopped."""
        session = self._session()
        if not is_disk_full_text(reason):
            return False
        if session.disk_full is None:
            session.disk_full = reason
            self.print(
                f"trial {self._name(trial)} found the disk full ({reason}): stopping the search; its finished "
                f"trials and its state are kept  ({self.clock()})"
            )
            handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
            if callable(handler) and threading.current_thread() is threading.main_thread():
                signal.raise_signal(signal.SIGUSR1)  # Ray Tune's handler (tune.py _setup_signal_catching)
        return True

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        """A trial failed and Ray Tune retries it (``max_failures``): one line, not Ray's traceback alone; on a
        full disk no retry (it would fail again), the search stops instead."""
        if self.stop_on_full_disk(trial, error_reason(trial)):
            return
        failures = int(getattr(trial, "num_failures", 0) or 0)
        self.print(
            f"trial {self._name(trial)} failed ({error_reason(trial)}): retrying from its last checkpoint, "
            f"attempt {failures + 1}"
            + (f" of {retries + 1}" if (retries := getattr(self, "max_failures", None)) is not None else "")
            + f"  ({self.clock()})"
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._count_finished(trial)
        reason = error_reason(trial)
        self.run_ids[trial.trial_id] = self.tracker.close_trial(
            trial.trial_id,
            trial_run_name(trial.trial_id, trial.config),
            trial.config,
            "FAILED",
            reason=reason,
            tags=self.labels(trial, "failed"),
        )
        self.print(f"trial {self._name(trial)} FAILED [{self.finished}/{self._total()}]: {reason}  ({self.clock()})")
        self.stop_on_full_disk(trial, reason)
