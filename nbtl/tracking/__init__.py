"""MLflow tracking: one experiment per search name, a parent run per search, a child run per trial.

The rooms that write to MLflow's tracking store (``models/`` logs and loads models). The driver owns the parent run
and closes every child run (so a trial that Ray stopped early or whose worker died never stays RUNNING); each trial, in
its Ray worker, creates its child run and logs its params and per-epoch metrics (``step=epoch``) to the same store,
found by the tag ``nbtl.trial_id``.

- :mod:`nbtl.tracking.client`: the store's URI and client, nbtl's tags, experiments, the logged entities;
- :mod:`nbtl.tracking.runs`: the writers (a trial's run, a search's parent run, ``nbtl train`` and ``nbtl fit`` runs);
- :mod:`nbtl.tracking.queries`: the read side (finished searches, chosen training runs, finished trials);
- :mod:`nbtl.tracking.store`: :func:`check_tracking_uri`, the store checked in seconds before a command starts.
"""

from nbtl.tracking.client import (
    ATTEMPT_TAG,
    CHOSEN_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FAILED,
    INTERRUPTED,
    MAX_NOTE_LENGTH,
    MAX_PARAM_LENGTH,
    MODEL_URI_TAG,
    NOTE_TAG,
    PARENT_TAG,
    ROLE_TAG,
    RUN_NAME_TAG,
    SEARCH_CONTEXT,
    SEARCH_EXPERIMENT_PREFIX,
    SEARCH_TAG,
    SOURCE_TAG,
    STOP_REASON_TAG,
    STOP_REASONS,
    TRIAL_CONTEXT,
    TRIAL_ID_TAG,
    artifact_location,
    ensure_experiment,
    log_dataset,
    metric_entities,
    name_slug,
    param_entities,
    resolve_tracking_uri,
    retry_locked,
    search_experiment,
    status_for,
    tag_entities,
    tracking_client,
    trial_run_name,
)
from nbtl.tracking.queries import (
    chosen_training_runs,
    find_trial_run,
    finished_searches,
    finished_trials,
)
from nbtl.tracking.runs import (
    SearchTracker,
    TrainingRun,
    TrialTracker,
    log_fit,
)
from nbtl.tracking.store import check_tracking_uri

__all__ = [
    "check_tracking_uri",
    "ATTEMPT_TAG",
    "CHOSEN_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FAILED",
    "INTERRUPTED",
    "MAX_NOTE_LENGTH",
    "MAX_PARAM_LENGTH",
    "MODEL_URI_TAG",
    "NOTE_TAG",
    "PARENT_TAG",
    "ROLE_TAG",
    "RUN_NAME_TAG",
    "SEARCH_CONTEXT",
    "SEARCH_EXPERIMENT_PREFIX",
    "SEARCH_TAG",
    "SOURCE_TAG",
    "STOP_REASONS",
    "STOP_REASON_TAG",
    "SearchTracker",
    "TRIAL_CONTEXT",
    "TRIAL_ID_TAG",
    "TrainingRun",
    "TrialTracker",
    "artifact_location",
    "chosen_training_runs",
    "ensure_experiment",
    "find_trial_run",
    "finished_searches",
    "finished_trials",
    "log_dataset",
    "log_fit",
    "metric_entities",
    "param_entities",
    "resolve_tracking_uri",
    "retry_locked",
    "name_slug",
    "search_experiment",
    "status_for",
    "tag_entities",
    "tracking_client",
    "trial_run_name",
]
