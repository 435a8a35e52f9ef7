"""The one ranking (nbtl.ranking) and the reader of `nbtl train`'s result (its nbtl.chosen run)."""

from __future__ import annotations

import time

import pandas as pd

from nbtl.ranking import best_trial, rank_key, rank_trials, ranked_scored


def _table(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_a_tie_goes_to_the_lower_loss_at_the_best_epoch_not_at_the_last():
    table = _table(
        trial_id=["a", "b"],
        status=["FINISHED", "FINISHED"],
        best_val_accuracy=[0.9, 0.9],
        best_val_loss=[0.50, 0.20],  # b was better at its best epoch ...
        val_loss=[0.10, 0.90],  # ... though a ended with the lower loss
    )
    assert best_trial(table)["trial_id"] == "b"
    assert list(rank_trials(table)["trial_id"]) == ["b", "a"]


def test_failed_and_unscored_trials_never_win():
    table = _table(
        trial_id=["failed", "unscored", "ok"],
        status=["FAILED", "STOPPED", "STOPPED"],
        best_val_accuracy=[1.0, None, 0.3],
        best_val_loss=[0.0, None, 2.0],
    )
    assert best_trial(table)["trial_id"] == "ok"
    assert list(ranked_scored(table)["trial_id"]) == ["ok"]
    assert list(rank_trials(table)["trial_id"]) == ["ok", "unscored", "failed"]
    assert best_trial(table.iloc[:2]) is None
    assert best_trial(pd.DataFrame()) is None


def test_reevaluated_trials_rank_first_by_their_mean():
    table = _table(
        trial_id=["a", "b", "c"],
        status=["FINISHED"] * 3,
        best_val_accuracy=[0.95, 0.90, 0.99],
        best_val_loss=[0.1, 0.2, 0.1],
        mean_val_accuracy=[0.85, 0.90, None],  # a and b were repeated; a's repeat fell
        mean_val_loss=[0.3, 0.2, None],
    )
    assert list(rank_trials(table)["trial_id"]) == ["b", "a", "c"]


def test_rank_key_orders_metrics_as_the_table_is_ranked():
    rows = [
        {"trial_id": "a", "status": "FINISHED", "best_val_accuracy": 0.8, "best_val_loss": 0.4},
        {"trial_id": "b", "status": "FINISHED", "best_val_accuracy": 0.9, "best_val_loss": 0.6},
        {"trial_id": "c", "status": "FINISHED", "best_val_accuracy": 0.9, "best_val_loss": 0.5},
        {"trial_id": "d", "status": "FINISHED", "best_val_accuracy": None, "best_val_loss": None},
    ]
    by_key = [r["trial_id"] for r in sorted(rows, key=rank_key)]
    assert by_key == list(rank_trials(pd.DataFrame(rows))["trial_id"]) == ["c", "b", "a", "d"]


def test_the_train_result_is_the_chosen_run_not_the_newest(tracking_uri):
    """`nbtl train` runs its config, then the probe floor (newer); readers must take the run tagged chosen."""
    from mlflow import MlflowClient

    from nbtl.tracking import CHOSEN_TAG, TrainingRun, chosen_training_runs

    with TrainingRun(tracking_uri, "train-x", "config", {"lr": 0.1}, {}) as config_run:
        config_run.log_epoch({"best_val_accuracy": 0.9}, step=1)
        config_run.set_tags({CHOSEN_TAG: "true"})
    time.sleep(0.01)
    with TrainingRun(tracking_uri, "train-x", "config-probe", {"lr": 0.1}, {}) as probe_run:
        probe_run.log_epoch({"best_val_accuracy": 0.7}, step=1)
    with TrainingRun(tracking_uri, "train-other", "config", {"lr": 0.1}, {}):
        pass
    client = MlflowClient(tracking_uri=tracking_uri)
    newest = client.search_runs(
        [client.get_experiment_by_name("train-x").experiment_id], order_by=["attributes.start_time DESC"]
    )[0]
    assert newest.info.run_id == probe_run.run_id  # what `runs[0]` would have read
    chosen = chosen_training_runs(client, "train-x")
    assert [r.info.run_id for r in chosen] == [config_run.run_id]
    assert [r.info.run_id for r in chosen_training_runs(client)] == [config_run.run_id]
    assert chosen_training_runs(client, "no-such-experiment") == []
