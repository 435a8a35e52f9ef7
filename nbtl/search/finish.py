"""How a search ends: the results table (one row per trial, best first by the one ranking), the trials the time
budget cut off closed with their reason, the best config, plots, the hand-over of the best model, and the parent
run's summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from nbtl.config import TrialConfig, dump_config
from nbtl.errors import NbtlError
from nbtl.ranking import METRIC, best_trial, rank_trials, trial_config_of, trial_id_of
from nbtl.search import plots
from nbtl.search.handover import hand_over
from nbtl.search.options import SearchResult
from nbtl.search.session import reason_from_error_text
from nbtl.search.space import SearchSpace
from nbtl.tracking import SOURCE_TAG, STOP_REASON_TAG

#: Optuna's interactive plots of the search (nbtl.search.plots.optuna_html), on the parent run and in its folder.
OPTUNA_PLOTS = "optuna_plots.html"
RESULT_COLUMNS = [
    "epoch",
    "best_val_accuracy",
    "best_val_loss",
    "best_epoch",
    "test_accuracy",
    "test_macro_f1",
    "test_weighted_f1",
    "val_accuracy",
    "val_loss",
    "prefix_blocks",
    "prefix_cache_hit",
]


def _full_config(values: dict[str, Any] | None) -> dict[str, Any]:
    """A trial's config with every default filled in; as given when it is invalid (such a trial failed, and
    its row still belongs in the table)."""
    if not values:
        return {}
    try:
        return TrialConfig.from_dict(values).to_dict()
    except NbtlError:
        return {**TrialConfig().to_dict(), **values}


def results_table(
    results, run_ids: dict[str, str], finished_at: dict[str, float] | None = None
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One row per trial (its id, MLflow run, status, config, best-epoch metrics and ``finished_at_s``,
    the seconds from the search's start to the trial's end), best first; and each trial's full config by trial id."""

    rows, configs = [], {}
    for result in results:
        metrics = result.metrics or {}
        trial_id = trial_id_of(result)
        given = trial_config_of(result)
        config = _full_config(given)
        configs[trial_id] = config
        epochs = int(metrics.get("epoch", 0) or 0)
        # STOPPED: ended before its last epoch, by the scheduler (ASHA) or the time budget (possibly before its first)
        planned = int(config.get("epochs") or TrialConfig.default("epochs"))
        # an early-stopped trial (patience) ended on its own: FINISHED, not an ASHA stop
        status = (
            "FAILED"
            if result.error
            else ("STOPPED" if epochs < planned and not metrics.get("early_stopped") else "FINISHED")
        )
        row = {"trial_id": trial_id, "run_id": run_ids.get(trial_id, ""), "status": status}
        row.update({k: config.get(k) for k in (given or {})})
        row.update({k: metrics.get(k) for k in RESULT_COLUMNS})
        row["finished_at_s"] = (finished_at or {}).get(trial_id)
        row["error"] = reason_from_error_text(str(result.error))[:200] if result.error else ""
        rows.append(row)
    return rank_trials(pd.DataFrame(rows)), configs


def _trial_histories(results) -> dict[str, pd.DataFrame]:
    histories = {}
    for result in results:
        try:
            frame = result.metrics_dataframe
        except Exception:  # a trial that never reported has no progress file
            frame = None
        if frame is not None and not frame.empty and "epoch" in frame:
            trial_id = trial_id_of(result)
            histories[trial_id] = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return histories


def _log_plots(
    tracker, results, table: pd.DataFrame, configs, completed: list[str], space: SearchSpace, experiment_path: Path
) -> None:
    """The parent run's figures; a plot that cannot be drawn (too few trials) is skipped."""
    import matplotlib.pyplot as plt

    sources = dict(zip(table["trial_id"], table["source"], strict=True)) if "source" in table else {}
    figures = {"val_accuracy_per_trial.png": plots.accuracy_curves(_trial_histories(results), sources=sources)}
    by_id = table.set_index("trial_id")[METRIC].to_dict() if not table.empty else {}
    order = [t for t in completed if t in by_id] + [t for t in by_id if t not in completed]
    figures["best_accuracy_vs_trials.png"] = plots.best_so_far([by_id[t] for t in order])
    if not table.empty and "finished_at_s" in table:
        figures["best_accuracy_vs_time.png"] = plots.best_so_far_over_time(table["finished_at_s"], table[METRIC])
    complete = plots.completed_study(table, configs, space) if not table.empty else None
    importances = plots.fanova_importances(complete) if complete is not None else None  # once: the PNG and the page
    importance = plots.param_importances(complete, importances=importances) if importances is not None else None
    if importance is not None:
        figures["param_importance.png"] = importance
    for file, figure in figures.items():
        tracker.log_figure(figure, file)
        figure.savefig(experiment_path / file, dpi=100)
        plt.close(figure)
    if not table.empty:  # Optuna's interactive plots, as optuna-dashboard draws them from optuna.db
        history = plots.completed_study(table, configs, space, statuses=("FINISHED", "STOPPED"))
        page = plots.optuna_html(history, importances, title=f"nbtl search {experiment_path.name}")
        if page is not None:
            tracker.log_text(page, OPTUNA_PLOTS)
            (experiment_path / OPTUNA_PLOTS).write_text(page)


SUMMARY_ROWS = 5


def search_summary(name: str, table: pd.DataFrame, model=None) -> str:
    """The parent run's description, in markdown: the top trials, the model handed over and how to use it."""
    lines = [f"## nbtl search `{name}`", ""]
    if table.empty:
        return "\n".join([*lines, "No trial ran."])
    columns = [c for c in ("trial_id", "source", "stop_reason", METRIC, "test_accuracy") if c in table.columns]
    columns += [c for c in ("backbone", "transfer_blocks", "freeze_blocks", "lr", "head") if c in table.columns]

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:.4g}"
        return str(value)

    shown = table.head(SUMMARY_ROWS)
    lines += [
        f"Top {len(shown)} of {len(table)} trials (best first; every trial in `results.csv`):",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        *("| " + " | ".join(cell(row[c]) for c in columns) + " |" for _, row in shown.iterrows()),
    ]
    if model is not None:
        logged = model["logged"]
        uri = logged.uri
        lines += [
            "",
            f"Model: `{uri}`",
            "",
            "```bash",
            f"nbtl predict {uri} IMAGES...",
            "```",
            "",
            "```python",
            "import mlflow",
            f"model = mlflow.pyfunc.load_model({uri!r})",
            "```",
        ]
    return "\n".join(lines)


def label_unlabelled_trials(tracker, callback=None) -> int:
    """End and label the trial runs the callback never closed; how many. Trials the time budget cut off: Ray
    stopped them without telling the callback, and their workers leave the run to the driver
    (nbtl.search.trainable): FINISHED, stop reason ``time_budget``. A trial that ended on its own as the budget
    ran out (its worker ended the run FINISHED) may not have reached the callback either: stop reason
    ``finished`` or ``patience``. Both get their ``nbtl.source`` from the callback. An interrupted search never
    gets here."""
    count = 0
    for run in tracker.child_runs():
        trial_id = run.data.tags.get("nbtl.trial_id", "")
        if run.info.status == "RUNNING":
            reason, tags = "time_budget", {"nbtl.stopped_early": "true"}
        elif SOURCE_TAG not in run.data.tags and run.info.status == "FINISHED":
            reason, tags = ("patience" if run.data.metrics.get("early_stopped") else "finished"), {}
        else:
            continue
        labels = {STOP_REASON_TAG: reason}
        if callback is not None:
            callback.stop_reasons[trial_id] = reason
            labels[SOURCE_TAG] = callback.sources.get(trial_id, "sampler")
        tracker.close_trial(trial_id, run.info.run_name, {}, "FINISHED", tags={**tags, **labels})
        count += 1
    return count


def finish_search(
    tracker,
    results,
    callback,
    space: SearchSpace,
    experiment_path: Path,
    started: float,
    budget: float | None = None,
    reevaluation=None,
    handover=None,
    print_fn: Callable[[str], None] = print,
) -> SearchResult:
    """Write the results table, best config, plots and summary metrics to the parent run; end it.
    ``reevaluation(table, configs) -> table`` (:mod:`nbtl.search.reevaluate`) may re-rank the best trials first.
    With ``handover`` (:class:`nbtl.search.handover.Handover`) the best trials keep their best-epoch weights
    on their runs and the best one's model is logged on the parent run (and registered)."""
    run_ids = {r.data.tags.get("nbtl.trial_id"): r.info.run_id for r in tracker.child_runs()}
    completed = callback.completed if callback is not None else []
    finished_at = dict(callback.finished_at) if callback is not None else {}
    if callback is not None:  # trials the time budget (or an interrupt) cut off end now
        now = round(callback.elapsed(), 2)
        finished_at.update({trial_id_of(r): now for r in results if trial_id_of(r) not in finished_at})
    table, configs = results_table(
        results, {**run_ids, **(callback.run_ids if callback is not None else {})}, finished_at
    )
    if reevaluation is not None and not table.empty:
        table = reevaluation(table, configs)
    label_unlabelled_trials(tracker, callback)
    if not table.empty:  # where each trial came from and why it ended, as its run's tags say
        sources = callback.sources if callback is not None else {}
        reasons = callback.stop_reasons if callback is not None else {}
        fallback = {"FAILED": "failed", "FINISHED": "finished", "STOPPED": "time_budget"}
        table["source"] = [sources.get(t, "sampler") for t in table["trial_id"]]
        table["stop_reason"] = [
            reasons.get(t) or fallback.get(s, "") for t, s in zip(table["trial_id"], table["status"])
        ]
    best = None
    chosen = best_trial(table)  # the one ranking (nbtl.ranking), as every reader of the results
    if chosen is not None:
        row = chosen.to_dict()
        config = configs[row["trial_id"]]
        best = {
            "trial_id": row["trial_id"],
            "run_id": row["run_id"],
            "config": config,
            **{k: row.get(k) for k in RESULT_COLUMNS},
        }
        tracker.log_text(dump_config(config), "best_config.yaml")
        (experiment_path / "best_config.yaml").write_text(dump_config(config))
        tracker.set_tags({"nbtl.best_run_id": row["run_id"], "nbtl.best_trial_id": row["trial_id"]})
        tracker.log_metrics({"best_val_accuracy": row[METRIC], "best_test_accuracy": row["test_accuracy"]})
    csv = table.to_csv(index=False)
    tracker.log_text(csv, "results.csv")
    (experiment_path / "results.csv").write_text(csv)
    _log_plots(tracker, results, table, configs, completed, space, experiment_path)
    model = None
    if handover is not None and best is not None:
        model = hand_over(tracker, results, table, configs, handover, print_fn)
    tracker.set_note(search_summary(experiment_path.name, table, model))
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    wall_time = time.perf_counter() - started
    tracker.log_metrics(
        {
            "trials_finished": counts.get("FINISHED", 0) + counts.get("STOPPED", 0),
            "trials_failed": counts.get("FAILED", 0),
            "wall_time_s": wall_time,
            **({"time_budget_s": budget, "time_budget_used": wall_time / budget} if budget else {}),
        }
    )
    tracker.end("FINISHED")
    return SearchResult(
        table, best, tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id, str(experiment_path), model
    )
