"""The MLflow store: its URI, a client that waits out SQLite's locks, nbtl's tags, experiments, and the entities
(params, tags, metrics, datasets) every writer logs."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nbtl.codec import MAX_TEXT_LENGTH, encode
from nbtl.errors import TrackingStoreError

T = TypeVar("T")

TRIAL_ID_TAG = "nbtl.trial_id"
SEARCH_TAG = "nbtl.search"
ROLE_TAG = "nbtl.role"
PARENT_TAG = "mlflow.parentRunId"
#: A trial run's: where its config came from (a start point's label, ``probe``, ``conventional``, ``recommend-1``,
#: ``warm-start-1``..., or ``sampler``), and why it ended: ``finished`` (all its epochs), ``asha`` (the scheduler
#: stopped it), ``patience`` (its own early stopping), ``time_budget`` (the search's budget ran out), ``failed``,
#: ``interrupted`` (Ctrl-C, or the search ended around it: a full disk, an error). Also columns of results.csv.
SOURCE_TAG, STOP_REASON_TAG = "nbtl.source", "nbtl.stop_reason"
#: The run tag MLflow's UI shows, as markdown, as a run's description; the SQL stores keep 8000 characters of a tag.
NOTE_TAG, MAX_NOTE_LENGTH = "mlflow.note.content", 8000
STOP_REASONS = ("finished", "asha", "patience", "time_budget", "failed", "interrupted")
RUN_NAME_TAG = "mlflow.runName"
ATTEMPT_TAG = "nbtl.attempt"
CHOSEN_TAG = "nbtl.chosen"  # nbtl train: the run (config or its probe floor) that is the training's result
MODEL_URI_TAG = "nbtl.model_uri"  # the run's logged model (a search's best trial's, an ensemble's)
MAX_PARAM_LENGTH = MAX_TEXT_LENGTH
#: A search's MLflow experiment is its name with this prefix, as ``nbtl train`` uses ``train-`` and ``nbtl fit``
#: ``fit-``: a search named ``default`` is not mistaken for MLflow's own experiment "Default".
SEARCH_EXPERIMENT_PREFIX = "search-"
#: The ``mlflow.data.context`` of a search's dataset on its parent run, and on each trial's run.
SEARCH_CONTEXT, TRIAL_CONTEXT = "search", "training"


def name_slug(text: Any) -> str:
    """``text`` as a file- and experiment-name-safe word (e.g. a dataset name in ``train-<name>``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "data"


def search_experiment(search_name: str) -> str:
    """The MLflow experiment of the search ``search_name`` (``search-<name>``)."""
    return f"{SEARCH_EXPERIMENT_PREFIX}{search_name}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}"
    return "all" if value is None else str(value)


def trial_run_name(trial_id: str, config: dict[str, Any] | None = None) -> str:
    """A trial's run name, told apart at a glance in the MLflow UI: its id (as in the results table and the
    console) and its key settings, e.g. ``59a4ced1 efficientnet_lite0 transfer=all freeze=2 spinal lr=0.003``."""
    words = [trial_id]
    config = config or {}
    if "backbone" in config:
        words.append(str(config["backbone"]))
        words += [f"{k.split('_')[0]}={_short(config.get(k))}" for k in ("transfer_blocks", "freeze_blocks")]
        words += [str(config.get("head", "linear")), f"lr={_short(config.get('lr'))}"]
    return " ".join(words)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the working directory.

    A relative SQLite path (or ``file:`` store) is made absolute, because Ray workers run in other
    directories; a bare path names a SQLite file.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    elif uri.startswith("file:") and not uri.startswith("file:/"):  # file:mlruns, a relative file store
        uri = Path(uri[len("file:") :]).resolve().as_uri()
    elif "://" not in uri and not uri.startswith("file:"):  # a bare path
        uri = "sqlite:///" + str(Path(uri).resolve())
    return uri


def retry_locked(call: Callable[[], T], attempts: int = 8) -> T:
    """Run ``call``, retrying SQLite's 'database is locked' (several trials write at once)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:  # MlflowException / SQLAlchemy OperationalError
            if "locked" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def tracking_client(uri: str):
    """An MLflow client of ``uri``; a new SQLite store's tables are created by one process at a time.

    MLflow's ``SqlAlchemyStore`` creates missing tables and runs its migrations unguarded, so two
    processes opening a new store at once (two searches on the default ``./mlflow.db``) both run them
    and one dies. The lock is the one MLflow's own job and workspace stores take for their tables
    (``mlflow.store.db.utils._safe_initialize_tables``), so nbtl also waits for an ``mlflow server``
    creating the same file.
    """
    from mlflow import MlflowClient

    for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        logging.getLogger(name).setLevel(logging.WARNING)

    if not uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=uri)
    import hashlib
    import tempfile

    from filelock import FileLock, Timeout

    key = resolve_tracking_uri(uri).encode()  # the same file, however it was named
    lock = Path(tempfile.gettempdir()) / f"db_init_lock-{hashlib.md5(key, usedforsecurity=False).hexdigest()}"
    try:
        with FileLock(lock, timeout=300):
            return MlflowClient(tracking_uri=uri)
    except Timeout:
        raise TrackingStoreError(
            f"--tracking-uri {uri}: another process has been creating this store for 5 minutes "
            f"(it holds {lock}); wait for it to finish or stop it"
        ) from None


logger = logging.getLogger(__name__)

#: A run cut off by Ctrl-C ends KILLED (as ``mlflow.start_run`` does), one whose code raised FAILED.
INTERRUPTED, FAILED = "KILLED", "FAILED"


def status_for(error: BaseException) -> str:
    """The status a run that ``error`` ended takes: KILLED for an interrupt (Ctrl-C), FAILED otherwise."""
    return INTERRUPTED if isinstance(error, KeyboardInterrupt) else FAILED


def param_entities(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, encode(v)) for k, v in values.items()]


def tag_entities(values: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, encode(v)) for k, v in values.items()]


def metric_entities(values: dict[str, float], step: int):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: next to a local SQLite store (``<db folder>/mlartifacts``, the
    folder ``mlflow server`` uses by default), never MLflow's default ``./mlruns`` in whatever directory
    the command ran from; ``None`` (the store's own default) for every other store."""
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()


#: The experiment tag MLflow 3's UI reads to choose its page: without it a new experiment opens on the GenAI
#: "Overview / Traces" page, with it on the runs table of model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created if missing and restored if deleted, tagged as model training
    (:data:`EXPERIMENT_KIND_TAG`) unless it says otherwise.

    Two processes creating the same experiment at once: the loser reads the winner's."""
    experiment = retry_locked(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        location = artifact_location(client.tracking_uri)
        kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        try:
            return retry_locked(lambda: client.create_experiment(name, artifact_location=location, tags=kind))
        except Exception:  # RESOURCE_ALREADY_EXISTS when another process won
            experiment = retry_locked(lambda: client.get_experiment_by_name(name))
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        retry_locked(lambda: client.restore_experiment(experiment.experiment_id))
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # made by an older nbtl, or by hand
        try:  # only how the UI opens it: a user who may not edit the experiment still runs
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as error:  # noqa: BLE001
            logger.debug("experiment %s keeps no kind tag: %s", name, error)
    return experiment.experiment_id


def log_dataset(client, run_id: str, dataset: dict[str, Any], context: str) -> None:
    """Log a dataset (see :func:`nbtl.data.describe.describe_dataset`) as an input of run ``run_id``, as
    ``mlflow.log_input`` does, so the MLflow UI's Dataset column and dataset filters show it."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    entity = Dataset(
        name=dataset["name"],
        digest=dataset["digest"],
        source_type=dataset["source_type"],
        source=dataset["source"],
        profile=dataset.get("profile"),
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    retry_locked(lambda: client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=tags)]))
