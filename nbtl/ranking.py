"""The one ranking of trials: which trial is best, and in what order the others follow.

Every reader names its best trial here: the search's results table and its "Best trial" line, the
hand-over of the best model and of the kept weights, ``nbtl ensemble``, ``nbtl train``'s choice between
a config and its probe floor, and the benchmarks. Plain pandas: no Ray, no MLflow.

Rank by the best validation accuracy; a tie goes to the lower validation loss *at that best epoch*
(``best_val_loss``), not at the last epoch: on 90 validation images two trials tied at 0.967 and scored
0.822 and 0.956 on test, and the loss told them apart. Failed trials and trials without a result come last.
Trials that a search re-evaluated (``search.reevaluate``: columns ``mean_val_accuracy`` / ``mean_val_loss``,
the mean of their runs) come first, ranked by those means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

#: What ranks trials, in order: (column, ascending).
METRIC, MODE = "best_val_accuracy", "max"
TIE_BREAK = "best_val_loss"
RANKING = [(METRIC, False), (TIE_BREAK, True)]
#: Re-evaluated trials (nbtl.search.reevaluate) rank first, by the mean of their runs.
REEVALUATED = [("mean_val_accuracy", False), ("mean_val_loss", True)]

__all__ = [
    "METRIC",
    "MODE",
    "RANKING",
    "TIE_BREAK",
    "TRIAL_FOLDER_PREFIX",
    "best_trial",
    "rank_key",
    "rank_trials",
    "ranked_scored",
    "trial_config_of",
    "trial_folder",
    "trial_id_of",
]


#: A trial's folder in its study's (Ray Tune's ``trial_dirname_creator``: :func:`trial_folder`): what
#: :func:`trial_id_of` reads a trial's id from when the trial never reported.
TRIAL_FOLDER_PREFIX = "trial-"


def trial_folder(trial) -> str:
    """The name of a Ray Tune trial's folder: ``trial-`` and its trial id (unique in the study)."""
    return f"{TRIAL_FOLDER_PREFIX}{trial.trial_id}"


def _reported(result) -> bool:
    """Whether a Ray Tune ``Result`` holds a report of its trial: Ray Tune fills ``training_iteration`` into each.
    A trial that never reported comes back with the metrics its worker filled in when it was handed the trial, and
    a reused worker (``reuse_actors``) fills them in before it is reset: they name the trial it ran before, its
    id and its config (Ray Tune 2.60, ``Trial.set_ray_actor`` before ``_schedule_trial_reset``)."""
    return "training_iteration" in (result.metrics or {})


def trial_id_of(result) -> str:
    """The trial id of a Ray Tune ``Result``: the one it reported, else the one in its folder's name
    (:func:`trial_folder`; a study written before that naming: the id its worker filled in, else the folder's
    name). The key of a trial in the results table, the hand-over and the callbacks."""
    metrics = result.metrics or {}
    if _reported(result) and metrics.get("trial_id"):
        return metrics["trial_id"]
    name = Path(result.path).name if result.path else ""
    if name.startswith(TRIAL_FOLDER_PREFIX):
        return name.removeprefix(TRIAL_FOLDER_PREFIX)
    return metrics.get("trial_id") or name


def trial_config_of(result) -> dict[str, Any] | None:
    """The config of a Ray Tune ``Result``'s trial: the one it reported, else the ``params.json`` Ray Tune wrote in
    its folder when it started, else None (a trial that never started)."""
    if _reported(result):
        return result.config
    params = Path(result.path) / "params.json" if result.path else None
    try:
        return json.loads(params.read_text()) if params is not None else None
    except (OSError, ValueError):
        return None


def rank_trials(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` best first (:data:`RANKING`), failed trials and trials without a result last; stable, so
    trials that tie on both keys keep their order."""
    if table.empty:
        return table
    keys = [(c, a) for c, a in REEVALUATED + RANKING if c in table]
    failed = table["status"].eq("FAILED") if "status" in table else pd.Series(False, index=table.index)
    repeated = table[REEVALUATED[0][0]].notna() if REEVALUATED[0][0] in table else pd.Series(False, index=table.index)
    ranked = table.assign(_failed=failed, _single=~repeated).sort_values(
        ["_failed", "_single", *(c for c, _ in keys)],
        ascending=[True, True, *(a for _, a in keys)],
        na_position="last",
        kind="stable",
    )
    return ranked.drop(columns=["_failed", "_single"]).reset_index(drop=True)


def ranked_scored(table: pd.DataFrame) -> pd.DataFrame:
    """The trials that have a score (not failed, :data:`METRIC` known), best first."""
    if table.empty:
        return table
    ranked = rank_trials(table)
    failed = ranked["status"].eq("FAILED") if "status" in ranked else pd.Series(False, index=ranked.index)
    return ranked[~failed & ranked[METRIC].notna()].reset_index(drop=True)


def best_trial(table: pd.DataFrame) -> pd.Series | None:
    """The best scored trial of ``table`` (one row), or None when no trial has a score."""
    scored = ranked_scored(table)
    return None if scored.empty else scored.iloc[0]


def rank_key(metrics: Mapping[str, Any]) -> tuple[float, float]:
    """A sort key of one trial's metrics that puts the best first, as :func:`rank_trials` does:
    ``sorted(trials, key=lambda t: rank_key(t.metrics))``."""
    accuracy = metrics.get(METRIC)
    loss = metrics.get(TIE_BREAK)
    accuracy = -math.inf if accuracy is None or accuracy != accuracy else float(accuracy)
    loss = math.inf if loss is None or loss != loss else float(loss)
    return (-accuracy, loss)
