"""Driver-side Ray Tune callback: progress lines, and closing each trial's MLflow run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ray.tune import Callback

from nbtl.tracking import SearchTracker


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def error_reason(trial) -> str:
    """The last line of a failed trial's traceback (e.g. ``TrialDivergedError: loss became nan ...``)."""
    text = trial.get_error() or ""
    if not isinstance(text, str):
        text = str(text)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "the trial's worker ended without a traceback (killed or out of memory)"
    return reason[:500]


@dataclass
class Session:
    """The driver-side objects of one running search: its tracker, its printer, and the callback
    Ray Tune actually drives (after ``Tuner.restore`` that is an unpickled copy, not ours)."""

    tracker: SearchTracker
    print: Callable[[str], None]
    callback: "SearchCallback | None" = None


#: Running searches of this process by experiment path. Ray Tune pickles its callbacks into the
#: experiment (for ``Tuner.restore``); a restored callback finds its live tracker here instead of
#: carrying a stale MLflow client.
ACTIVE: dict[str, Session] = {}


class SearchCallback(Callback):
    """Prints a line per epoch and per finished trial, and makes sure no trial's run stays RUNNING:
    a trial that finished, was stopped early by the scheduler, or whose worker died is closed here.
    """

    def __init__(self, key: str, total_trials: int, max_epochs: int, budget: float | None = None,
                 started: float | None = None):
        self.key = key
        self.total = total_trials
        self.max_epochs = max_epochs
        self.budget = budget
        self.started = time.time() if started is None else started   # wall clock (epoch seconds) of the search's start
        self.finished = 0
        self.best = float("-inf")
        self.run_ids: dict[str, str] = {}
        self.completed: list[str] = []
        self.finished_at: dict[str, float] = {}

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
        return {"finished": self.finished, "best": self.best, "run_ids": dict(self.run_ids),
                "completed": list(self.completed), "finished_at": dict(self.finished_at)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.finished, self.best = state["finished"], state["best"]
        self.run_ids, self.completed = dict(state["run_ids"]), list(state["completed"])
        self.finished_at = dict(state.get("finished_at", {}))

    def _name(self, trial) -> str:
        return str(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        config = trial.config
        summary = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())
        self.print(f"trial {self._name(trial)} started: {summary}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        best = result.get("best_val_accuracy", float("nan"))
        self.best = max(self.best, best)
        self.print(f"trial {self._name(trial)} epoch {int(result.get('epoch', 0))}: "
                   f"val_accuracy={result.get('val_accuracy', float('nan')):.4f} "
                   f"val_loss={result.get('val_loss', float('nan')):.4f}  (search best {self.best:.4f}; {self.clock()})")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.finished += 1
        self.completed.append(trial.trial_id)
        self.finished_at[trial.trial_id] = round(self.elapsed(), 2)
        epochs = int(trial.last_result.get("epoch", 0)) if trial.last_result else 0
        planned = int(trial.config.get("epochs", self.max_epochs))
        stopped = 0 < epochs < planned
        self.run_ids[trial.trial_id] = self.tracker.close_trial(
            trial.trial_id, str(trial), trial.config, "FINISHED",
            tags={"nbtl.stopped_early": "true"} if stopped else None)
        note = f" (stopped early by the scheduler after {epochs} of {planned} epochs)" if stopped else ""
        best = trial.last_result.get("best_val_accuracy", float("nan")) if trial.last_result else float("nan")
        total = self.total if self.total > 0 else "?"
        self.print(f"trial {self._name(trial)} finished [{self.finished}/{total}]: best_val_accuracy={best:.4f}{note}"
                   f"  ({self.clock()})")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.finished += 1
        self.completed.append(trial.trial_id)
        self.finished_at[trial.trial_id] = round(self.elapsed(), 2)
        reason = error_reason(trial)
        self.run_ids[trial.trial_id] = self.tracker.close_trial(
            trial.trial_id, str(trial), trial.config, "FAILED", reason=reason)
        self.print(f"trial {self._name(trial)} FAILED [{self.finished}/{self.total if self.total > 0 else '?'}]: {reason}"
                   f"  ({self.clock()})")
