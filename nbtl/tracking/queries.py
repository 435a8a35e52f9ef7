"""The read side: finished searches, the chosen ``nbtl train`` runs, a trial's run, and every finished trial of a
store (the heuristics' meta-dataset)."""

from __future__ import annotations

from typing import Any

from nbtl.data.settings import SETTING_KEYS
from nbtl.tracking.client import (
    CHOSEN_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SEARCH_TAG,
    TRIAL_ID_TAG,
    resolve_tracking_uri,
    retry_locked,
    tracking_client,
)


def _quoted(value: str) -> str | None:
    """``value`` as a string literal of an MLflow search filter, or None when it holds both kinds of quote."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def finished_searches(client, name: str | None = None) -> list:
    """The FINISHED parent runs of search ``name`` (of every search when None), newest first, in any active
    experiment of the store (``search-<name>``, or ``<name>`` for searches of nbtl 0.1.0 and before)."""
    from mlflow.entities import ViewType

    experiments = [
        e.experiment_id for e in retry_locked(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
    ]
    if not experiments:
        return []
    clauses = ["attributes.status = 'FINISHED'", f"tags.`{ROLE_TAG}` = 'search'"]
    literal = None if name is None else _quoted(name)
    if literal is not None:
        clauses.append(f"tags.`{SEARCH_TAG}` = {literal}")
    runs = retry_locked(
        lambda: client.search_runs(
            experiments, filter_string=" and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1000
        )
    )
    return [r for r in runs if name is None or r.data.tags.get(SEARCH_TAG) == name]


def chosen_training_runs(client, experiment: str | None = None) -> list:
    """The FINISHED ``nbtl train`` runs tagged :data:`CHOSEN_TAG` (each the result of one ``nbtl train``: its
    config, or the probe floor when that won), newest first; of ``experiment`` only when given. A train run
    without the tag (the one it was compared with) is never the result."""
    from mlflow.entities import ViewType

    if experiment is None:
        found = retry_locked(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
    else:
        found = [e for e in [retry_locked(lambda: client.get_experiment_by_name(experiment))] if e is not None]
    experiments = [e.experiment_id for e in found]
    if not experiments:
        return []
    clauses = ["attributes.status = 'FINISHED'", f"tags.`{ROLE_TAG}` = 'train'", f"tags.`{CHOSEN_TAG}` = 'true'"]
    return retry_locked(
        lambda: client.search_runs(
            experiments, filter_string=" and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1000
        )
    )


def find_trial_run(client, experiment_id: str, trial_id: str):
    runs = retry_locked(
        lambda: client.search_runs(
            [experiment_id], filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'", max_results=1
        )
    )
    return runs[0] if runs else None


def finished_trials(tracking_uri: str | None) -> list[dict[str, Any]]:
    """Every finished trial of every search in a store, for the heuristics' meta-dataset.

    One dict per child run that ran all its epochs (status FINISHED, not stopped early by the
    scheduler): the search's data settings (``data``, ``image_size``, ``per_class``, ``classes``,
    ``seed``, ``val_fraction``/``test_fraction`` as searched), the trial's params, and its final
    ``best_val_accuracy`` and ``test_accuracy``; plus ``search``, ``parent_run_id``, ``run_id``.
    """
    from mlflow.entities import ViewType

    uri = resolve_tracking_uri(tracking_uri)
    client = tracking_client(uri)

    experiments = retry_locked(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000))
    rows = []
    for experiment in experiments:
        runs = []
        token = None
        while True:
            page = retry_locked(
                lambda experiment=experiment, token=token: client.search_runs(
                    [experiment.experiment_id], max_results=1000, page_token=token
                )
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
        parents = {r.info.run_id: r for r in runs if r.data.tags.get(ROLE_TAG) == "search"}
        for run in runs:
            parent = parents.get(run.data.tags.get(PARENT_TAG, ""))
            if (
                parent is None
                or run.data.tags.get(ROLE_TAG) != "trial"
                or run.info.status != "FINISHED"
                or run.data.tags.get("nbtl.stopped_early") == "true"
                or "best_val_accuracy" not in run.data.metrics
            ):
                continue
            params = parent.data.params
            settings = {k: params.get(k) for k in ("data", *SETTING_KEYS)}
            settings["split_seed"] = params.get("split_seed", params.get("seed"))  # older stores: seed
            ended = parent.info.end_time
            settings["search_seconds"] = (ended - parent.info.start_time) / 1000 if ended else None
            rows.append(
                {
                    "search": parent.data.tags.get(SEARCH_TAG, experiment.name),
                    "parent_run_id": parent.info.run_id,
                    "run_id": run.info.run_id,
                    **settings,
                    **run.data.params,
                    "split_seed": settings["split_seed"],  # the search's; a trial's own `seed` trains it
                    "best_val_accuracy": run.data.metrics["best_val_accuracy"],
                    "test_accuracy": run.data.metrics.get("test_accuracy"),
                }
            )
    return rows
