"""The meta-dataset: finished trials joined with their dataset's fit signals, and learning from it.

``nbtl heuristics learn --tracking-uri URI`` reads every finished trial of every search in an MLflow
store (:func:`nbtl.tracking.finished_trials`), measures each searched dataset once (features are
cached), writes one row per trial (config + signals + validation accuracy) as CSV and fits the
:class:`~nbtl.heuristics.learned.LearnedRecommender` on it, saved as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbtl.codec import is_unset
from nbtl.config import TrialConfig
from nbtl.data.settings import DataSettings
from nbtl.errors import NbtlError
from nbtl.heuristics.learned import LearnedRecommender, fit_recommender
from nbtl.heuristics.recommend import measure_task
from nbtl.heuristics.signals import DATASET_SIGNALS, HeuristicsError, backbone_signal_names
from nbtl.resources import shipped

__all__ = ["TASK_KEYS", "learn", "meta_rows", "task_key"]

TASK_KEYS = ("data", "image_size", "per_class", "classes", "seed")


def _setting(value: Any) -> Any:
    return None if is_unset(value) else value


def task_key(row: dict[str, Any]) -> str:
    """A readable id of the task a trial ran on: data spec, classes, images per class, resolution, seed."""
    parts = [str(row["data"])]
    if _setting(row.get("classes")):
        parts.append(f"classes={row['classes']}")
    if _setting(row.get("per_class")):
        parts.append(f"per_class={row['per_class']}")
    parts.append(f"{row['image_size']}px")
    defaults = DataSettings()
    val, test = (float(_setting(row.get(k)) or getattr(defaults, k)) for k in ("val_fraction", "test_fraction"))
    if (val, test) != (defaults.val_fraction, defaults.test_fraction):  # a split other than the default's
        parts.append(f"split={val:g}/{test:g}")
    parts.append(f"seed={_split_seed(row)}")
    return " ".join(parts)


def _split_seed(row: dict[str, Any]) -> int:
    """The seed of the search's split: ``split_seed`` (the search's ``seed``; a trial's own ``seed`` only trains it),
    else ``seed`` for rows written before trials had seeds of their own."""
    value = _setting(row.get("split_seed"))
    return int(float(value if value is not None else (_setting(row.get("seed")) or 0)))


def meta_rows(
    trials: list[dict[str, Any]], log: Callable[[str], None] | None = None, measure=None
) -> list[dict[str, Any]]:
    """Join finished trials with their task's fit signals: one row per trial.

    ``measure(data, backbones, settings) -> TaskFit`` defaults to :func:`~nbtl.heuristics.recommend.measure_task`
    on the search's data settings, read from the trial row (the parent run's params: image size, split
    fractions, per-class cap, classes, the search's seed as ``split_seed``), so the fit is measured on the
    search's own training split (the data must be readable here).
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        if _setting(trial.get("data")) is None or _setting(trial.get("image_size")) is None:
            continue
        by_task.setdefault(task_key(trial), []).append(trial)
    rows = []
    for key, members in sorted(by_task.items()):
        first = members[0]
        backbones = sorted({str(t.get("backbone") or TrialConfig.default("backbone")) for t in members})
        try:
            data_settings = DataSettings.from_params({**first, "split_seed": _split_seed(first)}, where=f"task {key}")
        except NbtlError as error:
            raise HeuristicsError(f"{error}; leave this search out") from None
        if log:
            log(f"task {key}: {len(members)} finished trials, measuring {', '.join(backbones)}")
        try:
            task = (measure or measure_task)(str(first["data"]), backbones, data_settings)
        except NbtlError as error:  # e.g. the data is not readable on this machine: say which task
            raise HeuristicsError(
                f"task {key}: cannot measure its fit here ({error}); make the data readable on "
                "this machine or leave its searches out"
            ) from None
        for trial in members:
            backbone = str(trial.get("backbone") or TrialConfig.default("backbone"))
            config = {k: trial.get(k) for k in TrialConfig.keys() if k in trial}
            rows.append(
                {
                    "task": key,
                    "dataset": task.dataset_name,
                    "data": str(first["data"]),
                    "image_size": data_settings.image_size,
                    "per_class": data_settings.per_class,
                    "classes": data_settings.classes,
                    "split_seed": data_settings.split_seed,
                    "val_fraction": data_settings.val_fraction,
                    "test_fraction": data_settings.test_fraction,
                    "search": trial.get("search"),
                    "run_id": trial.get("run_id"),
                    **config,
                    **{k: task.dataset[k] for k in DATASET_SIGNALS},
                    **{k: task.backbones[backbone].get(k, math.nan) for k in backbone_signal_names()},
                    "best_val_accuracy": float(trial["best_val_accuracy"]),
                    "test_accuracy": trial.get("test_accuracy"),
                    "search_seconds": trial.get("search_seconds"),
                    "fit_seconds": round(task.seconds, 2),
                }
            )
    return rows


def learn(rows: list[dict[str, Any]], source: str) -> LearnedRecommender:
    """Fit the learned recommender on meta-dataset rows; the penalty is chosen leave-one-task-out."""
    if not rows:
        raise HeuristicsError(
            f"{source}: no finished trials to learn from; run nbtl search first "
            "(trials stopped early by ASHA or failed do not count)"
        )
    model = fit_recommender(rows, groups=[str(r["task"]) for r in rows])
    model.info.update(source=source, tasks_seen=sorted({str(r["task"]) for r in rows}))
    return model


def read_meta_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a meta-dataset CSV (as written by ``nbtl heuristics learn --meta-out``).

    ``heuristics/meta_dataset.csv``, when no such file is here, is the one shipped with nbtl.
    """
    import pandas as pd

    if not Path(path).is_file():
        path = shipped(path) or path
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise HeuristicsError(f"meta-dataset {path}: cannot read it as CSV ({error})") from None
    missing = [k for k in ("task", "best_val_accuracy", "num_blocks") if k not in table.columns]
    if missing:
        raise HeuristicsError(
            f"meta-dataset {path}: missing column {missing[0]!r}; write it with nbtl heuristics learn"
        )
    return [{k: (None if v != v else v) for k, v in row.items()} for row in table.to_dict("records")]
