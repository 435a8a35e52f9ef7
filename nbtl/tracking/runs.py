"""The writers: a trial's child run (:class:`TrialTracker`, in its Ray worker), a search's parent run and the closing
of its trials' runs (:class:`SearchTracker`, in the driver), one ``nbtl train`` run (:class:`TrainingRun`) and one
``nbtl fit`` run (:func:`log_fit`)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nbtl import __version__
from nbtl.codec import encode
from nbtl.errors import one_line
from nbtl.tracking.client import (
    ATTEMPT_TAG,
    FAILED,
    INTERRUPTED,
    MAX_NOTE_LENGTH,
    NOTE_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SEARCH_CONTEXT,
    SEARCH_TAG,
    STOP_REASON_TAG,
    TRIAL_CONTEXT,
    TRIAL_ID_TAG,
    ensure_experiment,
    log_dataset,
    metric_entities,
    param_entities,
    resolve_tracking_uri,
    retry_locked,
    status_for,
    tag_entities,
    tracking_client,
)
from nbtl.tracking.queries import find_trial_run

logger = logging.getLogger(__name__)


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
            retry_locked(lambda: self.client.log_batch(self.run_id, tags=tag_entities({**where, ATTEMPT_TAG: attempt})))
            if existing.info.status != "RUNNING":
                retry_locked(lambda: self.client.update_run(self.run_id, status="RUNNING"))
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
        all_tags = {k: encode(v) for k, v in all_tags.items()}  # the REST API takes strings only
        run = retry_locked(lambda: self.client.create_run(experiment_id, run_name=trial_name, tags=all_tags))
        self.run_id = run.info.run_id
        retry_locked(lambda: self.client.log_batch(self.run_id, params=param_entities(params)))
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
        retry_locked(lambda: self.client.log_batch(self.run_id, metrics=metric_entities(metrics, step)))

    def end(self, status: str = "FINISHED", reason: str | None = None, tags: dict[str, Any] | None = None) -> None:
        extra = dict(tags or {})
        if reason:
            extra["nbtl.error"] = reason
        if extra:
            retry_locked(lambda: self.client.log_batch(self.run_id, tags=tag_entities(extra)))
        retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))


class SearchTracker:
    """The driver's side: the experiment, the parent run, and closing trials' runs."""

    def __init__(
        self,
        tracking_uri: str | None,
        search_name: str,
        experiment: str | None = None,
        study: str = "search",
        resume_hint: str | None = "continue it with nbtl search --resume",
    ):
        self.study, self.resume_hint = study, resume_hint  # how an ended parent run's reason names it
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = tracking_client(self.tracking_uri)
        self.search_name = search_name
        self.experiment_name = experiment or search_name
        self.experiment_id = ensure_experiment(self.client, self.experiment_name)
        self.parent_run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, Any], run_name: str | None = None) -> str:
        all_tags = {ROLE_TAG: "search", SEARCH_TAG: self.search_name, "nbtl.version": __version__, **tags}
        all_tags = {k: encode(v) for k, v in all_tags.items()}
        run = retry_locked(
            lambda: self.client.create_run(
                self.experiment_id,
                run_name=run_name or f"{self.search_name} {time.strftime('%Y-%m-%d %H:%M')}",
                tags=all_tags,
            )
        )
        self.parent_run_id = run.info.run_id
        retry_locked(lambda: self.client.log_batch(self.parent_run_id, params=param_entities(params)))
        return self.parent_run_id

    def attach(self, parent_run_id: str) -> None:
        """Continue an existing parent run (resume)."""
        self.parent_run_id = parent_run_id
        retry_locked(lambda: self.client.update_run(parent_run_id, status="RUNNING"))

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
            retry_locked(lambda: self.client.log_batch(run.info.run_id, tags=tag_entities(extra)))
        if run.info.status == "RUNNING":
            retry_locked(lambda run=run: self.client.set_terminated(run.info.run_id, status=status))
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        retry_locked(lambda: self.client.log_batch(self.parent_run_id, metrics=metric_entities(metrics, step)))

    def log_dataset(self, dataset: dict[str, Any]) -> None:
        log_dataset(self.client, self.parent_run_id, dataset, SEARCH_CONTEXT)

    def set_tags(self, tags: dict[str, Any]) -> None:
        retry_locked(lambda: self.client.log_batch(self.parent_run_id, tags=tag_entities(tags)))

    def set_note(self, markdown: str) -> None:
        """The parent run's description, which MLflow's UI renders as markdown (tag :data:`NOTE_TAG`)."""
        note = markdown[:MAX_NOTE_LENGTH]
        retry_locked(lambda: self.client.set_tag(self.parent_run_id, NOTE_TAG, note))

    def log_text(self, text: str, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_text(self.parent_run_id, text, artifact_file))

    def log_figure(self, figure, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_figure(self.parent_run_id, figure, artifact_file))

    def child_runs(self) -> list:
        return retry_locked(
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
                retry_locked(
                    lambda run=run, labels=labels: self.client.log_batch(run.info.run_id, tags=tag_entities(labels))
                )
                retry_locked(lambda run=run: self.client.set_terminated(run.info.run_id, status=status))
                count += 1
        return count

    def end(self, status: str = "FINISHED") -> None:
        if self.parent_run_id:
            retry_locked(lambda: self.client.set_terminated(self.parent_run_id, status=status))

    def abort(self, error: BaseException) -> None:
        """End the parent run and every trial run still open after ``error``: KILLED for an interrupt,
        the parent FAILED (its open trials KILLED: they did not fail themselves) otherwise. Never raises:
        ``error`` is what the caller reports."""
        status = status_for(error)
        hint = f"; {self.resume_hint}" if self.resume_hint else ""
        reason = (
            f"the {self.study} was interrupted{hint}"
            if status == INTERRUPTED
            else f"the {self.study} ended: {one_line(error, with_type=True)}"
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
    all_tags = {k: encode(v) for k, v in all_tags.items()}  # the REST API takes strings only
    run = retry_locked(lambda: client.create_run(experiment, run_name=name, tags=all_tags))
    run_id = run.info.run_id
    try:
        retry_locked(
            lambda: client.log_batch(run_id, params=param_entities(params), metrics=metric_entities(metrics, 0))
        )
        retry_locked(lambda: client.log_text(run_id, table.to_csv(index=False), "fit_table.csv"))
    except BaseException:
        retry_locked(lambda: client.set_terminated(run_id, status="FAILED"))
        raise
    retry_locked(lambda: client.set_terminated(run_id, status="FINISHED"))
    return uri, experiment, run_id


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
        all_tags = {k: encode(v) for k, v in all_tags.items()}
        run = retry_locked(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags))
        self.run_id = run.info.run_id
        self.ended = False
        retry_locked(lambda: self.client.log_batch(self.run_id, params=param_entities(params)))

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        retry_locked(lambda: self.client.log_batch(self.run_id, metrics=metric_entities(metrics, step)))

    def log_text(self, text: str, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def set_tags(self, tags: dict[str, Any]) -> None:
        retry_locked(lambda: self.client.log_batch(self.run_id, tags=tag_entities(tags)))

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            retry_locked(lambda: self.client.log_batch(self.run_id, tags=tag_entities({"nbtl.error": reason})))
        retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))
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
