"""Driver-side Ray Tune callback of a zoo study: a progress line per finished fold (time spent and left),
and every trial's MLflow run closed (the machinery of :class:`nbtl.search.callbacks.SearchCallback`)."""

from __future__ import annotations

from typing import Any

from nbtl.search.callbacks import SearchCallback
from nbtl.zoo.trainable import trial_name


class ZooCallback(SearchCallback):
    """:class:`~nbtl.search.callbacks.SearchCallback` with a zoo trial's name and its fold's metrics."""

    def _name(self, trial) -> str:
        cell = (trial.config or {}).get("cell")
        return trial_name(cell) if cell else str(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        pass  # frozen folds take seconds: one line when each ends is enough

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        if "accuracy" in result or "val_accuracy" not in result:
            return  # a fold's final result: on_trial_complete says it
        self.print(
            f"{self._name(trial)} epoch {int(result.get('epoch', 0))}: val_accuracy={result['val_accuracy']:.4f}"
            f"  ({self.clock()})"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.finished += 1
        self.completed.append(trial.trial_id)
        self.finished_at[trial.trial_id] = round(self.elapsed(), 2)
        self.run_ids[trial.trial_id] = self.tracker.close_trial(trial.trial_id, self._name(trial), {}, "FINISHED")
        result = trial.last_result or {}
        accuracy, f1 = result.get("accuracy", float("nan")), result.get("f1_macro", float("nan"))
        self.print(
            f"{self._name(trial)} [{self.finished}/{self.total}]: accuracy={accuracy:.4f} f1_macro={f1:.4f}"
            f"  ({self.clock()})"
        )
