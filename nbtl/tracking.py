"""MLflow tracking: one experiment per search name, a parent run per search, a child run per trial.

The only module that imports MLflow. The driver owns the parent run and closes every child run
(so a trial that Ray stopped early or whose worker died never stays RUNNING); each trial, in its
Ray worker, creates its child run and logs its params and per-epoch metrics (``step=epoch``) to
the same store, found by the tag ``nbtl.trial_id``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from nbtl import __version__
from nbtl.errors import one_line

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
MAX_PARAM_LENGTH = 6000
#: A search's MLflow experiment is its name with this prefix, as ``nbtl train`` uses ``train-`` and ``nbtl fit``
#: ``fit-``: a search named ``default`` is not mistaken for MLflow's own experiment "Default".
SEARCH_EXPERIMENT_PREFIX = "search-"
#: The ``mlflow.data.context`` of a search's dataset on its parent run, and on each trial's run.
SEARCH_CONTEXT, TRIAL_CONTEXT = "search", "training"


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


def _retry(call: Callable[[], T], attempts: int = 8) -> T:
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
        from nbtl.errors import TrackingStoreError

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


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in values.items()]


def _tags(values: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in values.items()]


def _metrics(values: dict[str, float], step: int):
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
    experiment = _retry(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        location = artifact_location(client.tracking_uri)
        kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        try:
            return _retry(lambda: client.create_experiment(name, artifact_location=location, tags=kind))
        except Exception:  # RESOURCE_ALREADY_EXISTS when another process won
            experiment = _retry(lambda: client.get_experiment_by_name(name))
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        _retry(lambda: client.restore_experiment(experiment.experiment_id))
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # made by an older nbtl, or by hand
        try:  # only how the UI opens it: a user who may not edit the experiment still runs
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as error:  # noqa: BLE001
            logger.debug("experiment %s keeps no kind tag: %s", name, error)
    return experiment.experiment_id


class TrialTracker:
    """A trial's child run, used from inside the trial (a Ray worker).

    Re-attaches to the trial's existing run when Ray retries or resumes the trial, so a trial
    has one run however often it restarts.
    """

    #: the last epoch this run already holds (a retried or resumed trial's): epochs up to it are not logged
    #: again, so a run never holds two points at one step
    logged_epoch = 0

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        trial_name: str,
        params: dict[str, Any],
        tags: dict[str, Any] | None = None,
        location: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
    ):
        self.client = tracking_client(tracking_uri)
        # Where this attempt runs (updated when Ray retries the trial elsewhere).
        where = {"nbtl.host": socket.gethostname(), "nbtl.pid": os.getpid(), **(location or {})}
        existing = find_trial_run(self.client, experiment_id, trial_id)
        if existing is not None:
            # Ray retried the trial (its worker died) or a resumed search continues it.
            self.run_id = existing.info.run_id
            self.logged_epoch = int(existing.data.metrics.get("epoch", 0))
            attempt = int(existing.data.tags.get(ATTEMPT_TAG, "1")) + 1
            _retry(lambda: self.client.log_batch(self.run_id, tags=_tags({**where, ATTEMPT_TAG: attempt})))
            if existing.info.status != "RUNNING":
                _retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
            return
        all_tags = {
            PARENT_TAG: parent_run_id,
            TRIAL_ID_TAG: trial_id,
            ROLE_TAG: "trial",
            "nbtl.version": __version__,
            ATTEMPT_TAG: 1,
            **where,
            **(tags or {}),
        }
        all_tags = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in all_tags.items()}  # the REST API takes strings only
        run = _retry(lambda: self.client.create_run(experiment_id, run_name=trial_name, tags=all_tags))
        self.run_id = run.info.run_id
        _retry(lambda: self.client.log_batch(self.run_id, params=_params(params)))
        if dataset:
            log_dataset(self.client, self.run_id, dataset, TRIAL_CONTEXT)

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        """Log epoch ``step``'s metrics (epochs count from 1), unless the run already holds that epoch (logged
        by an earlier attempt of the trial that was killed before Ray saw its checkpoint)."""
        if step <= self.logged_epoch:
            return
        self.log_metrics(metrics, step)
        self.logged_epoch = step

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log a trial's summary metrics (test scores, timings) at ``step``: always written, a retried
        trial's summary replacing the earlier attempt's as the run's latest value."""
        _retry(lambda: self.client.log_batch(self.run_id, metrics=_metrics(metrics, step)))

    def end(self, status: str = "FINISHED", reason: str | None = None, tags: dict[str, Any] | None = None) -> None:
        extra = dict(tags or {})
        if reason:
            extra["nbtl.error"] = reason
        if extra:
            _retry(lambda: self.client.log_batch(self.run_id, tags=_tags(extra)))
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))


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
    _retry(lambda: client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=tags)]))


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

    experiments = [e.experiment_id for e in _retry(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY))]
    if not experiments:
        return []
    clauses = ["attributes.status = 'FINISHED'", f"tags.`{ROLE_TAG}` = 'search'"]
    literal = None if name is None else _quoted(name)
    if literal is not None:
        clauses.append(f"tags.`{SEARCH_TAG}` = {literal}")
    runs = _retry(
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
        found = _retry(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
    else:
        found = [e for e in [_retry(lambda: client.get_experiment_by_name(experiment))] if e is not None]
    experiments = [e.experiment_id for e in found]
    if not experiments:
        return []
    clauses = ["attributes.status = 'FINISHED'", f"tags.`{ROLE_TAG}` = 'train'", f"tags.`{CHOSEN_TAG}` = 'true'"]
    return _retry(
        lambda: client.search_runs(
            experiments, filter_string=" and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1000
        )
    )


def find_trial_run(client, experiment_id: str, trial_id: str):
    runs = _retry(
        lambda: client.search_runs(
            [experiment_id], filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'", max_results=1
        )
    )
    return runs[0] if runs else None


class SearchTracker:
    """The driver's side: the experiment, the parent run, and closing trials' runs."""

    def __init__(self, tracking_uri: str | None, search_name: str, experiment: str | None = None):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = tracking_client(self.tracking_uri)
        self.search_name = search_name
        self.experiment_name = experiment or search_name
        self.experiment_id = ensure_experiment(self.client, self.experiment_name)
        self.parent_run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, Any], run_name: str | None = None) -> str:
        all_tags = {ROLE_TAG: "search", SEARCH_TAG: self.search_name, "nbtl.version": __version__, **tags}
        all_tags = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in all_tags.items()}
        run = _retry(
            lambda: self.client.create_run(
                self.experiment_id,
                run_name=run_name or f"{self.search_name} {time.strftime('%Y-%m-%d %H:%M')}",
                tags=all_tags,
            )
        )
        self.parent_run_id = run.info.run_id
        _retry(lambda: self.client.log_batch(self.parent_run_id, params=_params(params)))
        return self.parent_run_id

    def attach(self, parent_run_id: str) -> None:
        """Continue an existing parent run (resume)."""
        self.parent_run_id = parent_run_id
        _retry(lambda: self.client.update_run(parent_run_id, status="RUNNING"))

    def trial_run(self, trial_id: str):
        return find_trial_run(self.client, self.experiment_id, trial_id)

    def close_trial(
        self,
        trial_id: str,
        trial_name: str,
        params: dict[str, Any],
        status: str,
        reason: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> str:
        """End the trial's run with ``status`` unless it already ended, and set ``tags`` on it either way; create
        it if the trial never got that far (e.g. it failed while building its model). Returns the run id."""
        run = self.trial_run(trial_id)
        if run is None:
            tracker = TrialTracker(
                self.tracking_uri, self.experiment_id, self.parent_run_id, trial_id, trial_name, params, tags
            )
            tracker.end(status, reason)
            return tracker.run_id
        extra = dict(tags or {})  # also on a run its trial already ended (FINISHED by the trainable): its labels
        if reason and run.info.status == "RUNNING":
            extra["nbtl.error"] = reason
        if extra:
            _retry(lambda: self.client.log_batch(run.info.run_id, tags=_tags(extra)))
        if run.info.status == "RUNNING":
            _retry(lambda run=run: self.client.set_terminated(run.info.run_id, status=status))
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        _retry(lambda: self.client.log_batch(self.parent_run_id, metrics=_metrics(metrics, step)))

    def log_dataset(self, dataset: dict[str, Any]) -> None:
        log_dataset(self.client, self.parent_run_id, dataset, SEARCH_CONTEXT)

    def set_tags(self, tags: dict[str, Any]) -> None:
        _retry(lambda: self.client.log_batch(self.parent_run_id, tags=_tags(tags)))

    def set_note(self, markdown: str) -> None:
        """The parent run's description, which MLflow's UI renders as markdown (tag :data:`NOTE_TAG`)."""
        note = markdown[:MAX_NOTE_LENGTH]
        _retry(lambda: self.client.set_tag(self.parent_run_id, NOTE_TAG, note))

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(self.parent_run_id, text, artifact_file))

    def log_figure(self, figure, artifact_file: str) -> None:
        _retry(lambda: self.client.log_figure(self.parent_run_id, figure, artifact_file))

    def child_runs(self) -> list:
        return _retry(
            lambda: self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'", max_results=5000
            )
        )

    def close_open_children(self, status: str = "KILLED", reason: str = "") -> int:
        """End every child run of this search still RUNNING (after an interrupted search)."""
        count = 0
        for run in self.child_runs():
            if run.info.status == "RUNNING":
                labels = {STOP_REASON_TAG: "interrupted", **({"nbtl.error": reason} if reason else {})}
                _retry(lambda run=run, labels=labels: self.client.log_batch(run.info.run_id, tags=_tags(labels)))
                _retry(lambda run=run: self.client.set_terminated(run.info.run_id, status=status))
                count += 1
        return count

    def end(self, status: str = "FINISHED") -> None:
        if self.parent_run_id:
            _retry(lambda: self.client.set_terminated(self.parent_run_id, status=status))

    def abort(self, error: BaseException) -> None:
        """End the parent run and every trial run still open after ``error``: KILLED for an interrupt,
        the parent FAILED (its open trials KILLED: they did not fail themselves) otherwise. Never raises:
        ``error`` is what the caller reports."""
        status = status_for(error)
        reason = (
            "the search was interrupted; continue it with nbtl search --resume"
            if status == INTERRUPTED
            else f"the search ended: {one_line(error, with_type=True)}"
        )
        try:
            self.close_open_children(INTERRUPTED, reason)
            if status == FAILED:
                self.set_tags({"nbtl.error": one_line(error, with_type=True)})
            self.end(status)
        except Exception as cleanup:  # noqa: BLE001 -- the store itself may be what failed; `error` is what we report
            logger.warning(
                "could not close the MLflow runs of search %s: %s", self.search_name, one_line(cleanup, with_type=True)
            )

    @contextmanager
    def search_run(self, params: dict[str, Any], tags: dict[str, Any]) -> Iterator[str]:
        """The search's parent run for the block (its id): any error or Ctrl-C that leaves the block ends it
        and its open trial runs (:meth:`abort`), as ``mlflow.start_run`` does; the block ends it on success."""
        parent_run_id = self.start(params, tags)
        with self._closed_on_error():
            yield parent_run_id

    @contextmanager
    def resumed_run(self, parent_run_id: str) -> Iterator[str]:
        """:meth:`search_run` for an existing parent run that a resumed search continues."""
        self.attach(parent_run_id)
        with self._closed_on_error():
            yield parent_run_id

    @contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException as error:
            self.abort(error)
            raise


def log_fit(
    tracking_uri: str | None, name: str, params: dict[str, Any], tags: dict[str, Any], table, metrics: dict[str, float]
) -> tuple[str, str, str]:
    """Log one ``nbtl fit`` as a single finished run in experiment ``name``: ``params``, ``tags``
    (plus ``nbtl.role=fit``), ``metrics`` and the fit ``table`` (a DataFrame) as the artifact
    ``fit_table.csv``. Returns ``(tracking_uri, experiment_id, run_id)``."""
    uri = resolve_tracking_uri(tracking_uri)
    client = tracking_client(uri)
    experiment = ensure_experiment(client, name)
    all_tags = {ROLE_TAG: "fit", "nbtl.version": __version__, **tags}
    all_tags = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in all_tags.items()}  # the REST API takes strings only
    run = _retry(lambda: client.create_run(experiment, run_name=name, tags=all_tags))
    run_id = run.info.run_id
    try:
        _retry(lambda: client.log_batch(run_id, params=_params(params), metrics=_metrics(metrics, 0)))
        _retry(lambda: client.log_text(run_id, table.to_csv(index=False), "fit_table.csv"))
    except BaseException:
        _retry(lambda: client.set_terminated(run_id, status="FAILED"))
        raise
    _retry(lambda: client.set_terminated(run_id, status="FINISHED"))
    return uri, experiment, run_id


def finished_trials(tracking_uri: str | None) -> list[dict[str, Any]]:
    """Every finished trial of every search in a store, for the heuristics' meta-dataset.

    One dict per child run that ran all its epochs (status FINISHED, not stopped early by the
    scheduler): the search's data settings (``data``, ``image_size``, ``per_class``, ``classes``,
    ``seed``, ``val_fraction``/``test_fraction`` as searched), the trial's params, and its final
    ``best_val_accuracy`` and ``test_accuracy``; plus ``search``, ``parent_run_id``, ``run_id``.
    """
    from mlflow.entities import ViewType

    from nbtl.data.settings import SETTING_KEYS

    uri = resolve_tracking_uri(tracking_uri)
    client = tracking_client(uri)

    experiments = _retry(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000))
    rows = []
    for experiment in experiments:
        runs = []
        token = None
        while True:
            page = _retry(
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
            settings = {k: parent.data.params.get(k) for k in ("data", *SETTING_KEYS)}
            ended = parent.info.end_time
            settings["search_seconds"] = (ended - parent.info.start_time) / 1000 if ended else None
            rows.append(
                {
                    "search": parent.data.tags.get(SEARCH_TAG, experiment.name),
                    "parent_run_id": parent.info.run_id,
                    "run_id": run.info.run_id,
                    **settings,
                    **run.data.params,
                    "split_seed": settings["seed"],  # the search's; a trial's own `seed` trains it
                    "best_val_accuracy": run.data.metrics["best_val_accuracy"],
                    "test_accuracy": run.data.metrics.get("test_accuracy"),
                }
            )
    return rows


class TrainingRun:
    """One ``nbtl train`` run: params, per-epoch metrics (``step=epoch``), FINISHED, FAILED or KILLED.

    As a context manager (``with TrainingRun(...) as run:``) the run ends FINISHED when the block ends,
    KILLED when Ctrl-C cuts it off and FAILED (with the error's line) when it raises.
    """

    def __init__(
        self, tracking_uri: str | None, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, Any]
    ):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = tracking_client(self.tracking_uri)
        self.experiment_id = ensure_experiment(self.client, experiment)
        all_tags = {ROLE_TAG: "train", "nbtl.version": __version__, **tags}
        all_tags = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in all_tags.items()}
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags))
        self.run_id = run.info.run_id
        self.ended = False
        _retry(lambda: self.client.log_batch(self.run_id, params=_params(params)))

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        _retry(lambda: self.client.log_batch(self.run_id, metrics=_metrics(metrics, step)))

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def set_tags(self, tags: dict[str, Any]) -> None:
        _retry(lambda: self.client.log_batch(self.run_id, tags=_tags(tags)))

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            _retry(lambda: self.client.log_batch(self.run_id, tags=_tags({"nbtl.error": reason})))
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))
        self.ended = True

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.ended:
            return
        if error is None:
            self.end("FINISHED")
            return
        status = status_for(error)
        try:
            self.end(
                status, reason="interrupted (Ctrl-C)" if status == INTERRUPTED else one_line(error, with_type=True)
            )
        except Exception as cleanup:  # noqa: BLE001 -- the store itself may be what failed
            logger.warning("could not close MLflow run %s: %s", self.run_id, one_line(cleanup, with_type=True))
