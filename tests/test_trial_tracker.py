"""A trial's child run on a real MLflow SQLite store: a retried attempt re-attaches to the run and skips the
epochs it already holds, while summary metrics (a zoo trial's test scores, logged at step 0 after its epochs)
are always written."""

from __future__ import annotations

from mlflow import MlflowClient

from conftest import new_store
from nbtl.tracking import TrialTracker, ensure_experiment


def test_a_retried_trial_skips_held_epochs_and_always_logs_its_summary(tmp_path):
    uri = new_store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = ensure_experiment(client, "tracker")
    parent = client.create_run(experiment).info.run_id

    def attempt() -> TrialTracker:
        return TrialTracker(uri, experiment, parent, "trial_00001", "trial 1", {"lr": 0.01})

    first = attempt()
    first.log_epoch({"epoch": 1, "val_accuracy": 0.5}, step=1)
    first.log_epoch({"epoch": 2, "val_accuracy": 0.6}, step=2)
    first.log_metrics({"accuracy": 0.7, "n_test": 30}, step=0)  # after the epochs, at step 0: still written
    # the worker dies here; Ray retries the trial from its epoch-1 checkpoint
    second = attempt()
    assert second.run_id == first.run_id and second.logged_epoch == 2
    second.log_epoch({"epoch": 2, "val_accuracy": 0.9}, step=2)  # already held: not logged again
    second.log_epoch({"epoch": 3, "val_accuracy": 0.8}, step=3)
    second.log_metrics({"accuracy": 0.75, "n_test": 30}, step=0)
    second.end("FINISHED")

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["nbtl.attempt"] == "2"
    history = client.get_metric_history(first.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.5), (2, 0.6), (3, 0.8)]
    assert run.data.metrics["n_test"] == 30 and run.data.metrics["accuracy"] == 0.75


def test_a_new_trial_logs_step_zero(tmp_path):
    uri = new_store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = ensure_experiment(client, "tracker")
    parent = client.create_run(experiment).info.run_id
    tracker = TrialTracker(uri, experiment, parent, "trial_00002", "trial 2", {})
    tracker.log_metrics({"accuracy": 0.5}, step=0)
    tracker.end("FINISHED")
    assert client.get_run(tracker.run_id).data.metrics["accuracy"] == 0.5


def test_experiments_open_on_the_training_runs_page(tmp_path):
    """MLflow 3's UI opens an experiment without ``mlflow.experimentKind`` on its GenAI traces page: nbtl's say
    model training, new ones and ones an older nbtl made alike; a kind set by hand is kept."""
    client = MlflowClient(tracking_uri=new_store(tmp_path))
    new = ensure_experiment(client, "search-new")
    old = client.create_experiment("search-old")  # as nbtl 0.1 made them: no kind
    assert ensure_experiment(client, "search-old") == old
    own = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    ensure_experiment(client, "mine")
    kinds = {e: client.get_experiment(e).tags.get("mlflow.experimentKind") for e in (new, old, own)}
    assert kinds == {new: "custom_model_development", old: "custom_model_development", own: "genai_development"}


def test_trials_the_callback_never_closed_are_ended_and_labelled_at_the_searchs_end(tmp_path):
    """As the time budget runs out Ray stops trials without telling the callback: one still training (its run
    RUNNING) and one whose worker had just ended its run FINISHED (all epochs, or patience) both get their
    ``nbtl.source`` and stop reason; a run the callback labelled keeps its labels."""
    from nbtl.search.callbacks import SearchCallback
    from nbtl.search.finish import label_unlabelled_trials
    from nbtl.tracking import SOURCE_TAG, STOP_REASON_TAG, SearchTracker

    uri = new_store(tmp_path)
    tracker = SearchTracker(uri, "cut-off")
    parent = tracker.start({}, {})
    callback = SearchCallback(key="cut-off", total_trials=0, max_epochs=3)
    callback.sources = {"t1": "probe", "t2": "sampler", "t3": "conventional", "t4": "sampler"}

    def trial(trial_id: str, metrics: dict[str, float], status: str | None) -> str:
        run = TrialTracker(uri, tracker.experiment_id, parent, trial_id, trial_id, {})
        run.log_epoch({"epoch": 1, **metrics}, step=1)
        if status:
            run.end(status)
        return run.run_id

    running = trial("t1", {}, None)
    finished = trial("t2", {}, "FINISHED")
    patience = trial("t3", {"early_stopped": 1.0}, "FINISHED")
    labelled = trial("t4", {}, "FINISHED")
    tracker.close_trial("t4", "t4", {}, "FINISHED", tags={SOURCE_TAG: "sampler", STOP_REASON_TAG: "asha"})

    assert label_unlabelled_trials(tracker, callback) == 3
    client = MlflowClient(tracking_uri=uri)
    runs = {run_id: client.get_run(run_id) for run_id in (running, finished, patience, labelled)}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    labels = {run_id: (r.data.tags[SOURCE_TAG], r.data.tags[STOP_REASON_TAG]) for run_id, r in runs.items()}
    assert labels == {
        running: ("probe", "time_budget"),
        finished: ("sampler", "finished"),
        patience: ("conventional", "patience"),
        labelled: ("sampler", "asha"),
    }
    assert runs[running].data.tags["nbtl.stopped_early"] == "true"
    assert callback.stop_reasons == {"t1": "time_budget", "t2": "finished", "t3": "patience"}
    assert label_unlabelled_trials(tracker, callback) == 0  # once is enough


def test_the_driver_hands_its_free_heap_back_while_trials_run(tmp_path, monkeypatch):
    """Issue 18's scale runs: a driver trimmed to 665 MB anonymous after its setup held 1,017 MB two minutes into the
    trials with 324 MB in use: its Ray and gRPC threads' freed pages stayed. The search's callback trims the heap
    (glibc's malloc_trim, without a gc pass) at its first step and then every TRIM_EVERY_S, not at every step."""
    import nbtl.search.callbacks as callbacks
    from nbtl.data.images import trim_heap
    from nbtl.search.session import ACTIVE, Session
    from nbtl.tracking import SearchTracker

    calls = []

    def spy(collect=True):
        calls.append((collect, trim_heap(collect=collect)))
        return calls[-1][1]

    monkeypatch.setattr(callbacks, "trim_heap", spy)
    ACTIVE["trims"] = Session(tracker=SearchTracker(new_store(tmp_path), "trims"), print=lambda line: None)
    try:
        callback = callbacks.SearchCallback(key="trims", total_trials=0, max_epochs=3)
        for _ in range(3):
            callback.on_step_end(0, [])
        assert calls == [(False, True)]  # glibc here: it could
        callback._trimmed_at -= callbacks.TRIM_EVERY_S  # as if that long had passed
        callback.on_step_end(0, [])
        callback.on_step_end(0, [])
        assert calls == [(False, True), (False, True)]
    finally:
        ACTIVE.pop("trims")
