"""Tests of nbtl.train.train_trial on a tiny real dataset (sklearn digits, 32 px) with real torch."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import Recorder
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.errors import NbtlError, TrialDivergedError
from nbtl.feeds import evaluate
from nbtl.train import train_trial
from nbtl.transfer import build_transfer

LITE0 = "efficientnet_lite0"
CPU = torch.device("cpu")
METRIC_KEYS = {
    "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_weighted_f1", "best_val_accuracy",
    "best_val_loss", "best_epoch", "test_loss", "test_accuracy", "test_macro_f1", "test_weighted_f1", "prefix_blocks",
    "prefix_cache_hit", "epoch_time_s", "learning_rate", "val_ece", "test_ece",
}  # fmt: skip
# Learns quickly on CPU: only the last block and the head train.
QUICK = dict(backbone=LITE0, freeze_blocks=8, lr=0.1, epochs=5, batch_size=32, seed=0)
# Exercises every piece of state a resume must restore: RNG (augmentation, dropout, batch order),
# momentum buffers, the cosine schedule, per-block lrs, re-initialised blocks and the regulariser.
RICH = dict(backbone=LITE0, transfer_blocks=7, freeze_blocks=5, lr=0.05, lr_decay=0.7, head_lr=0.1,
            l2sp_alpha=0.01, l2_beta=1e-4, l2_head=1e-3, head="spinal", head_width=16, head_dropout=0.2,
            epochs=3, batch_size=32, seed=1)  # fmt: skip
AUGMENTATION = {"hflip": True, "crop_padding": 2}


@pytest.fixture(scope="module")
def splits():
    dataset = load_dataset("digits", image_size=32, per_class=15, seed=0)
    return split_dataset(dataset, val_fraction=0.2, test_fraction=0.2, seed=0)


def _without_time(history):
    return [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in history]


def _train(config: dict, splits, weights, **kwargs):
    recorder = Recorder()
    result = train_trial(
        TrialConfig.from_dict(config), splits, state_dict=weights, report=recorder, device=CPU, **kwargs
    )
    return result, recorder


@pytest.fixture(scope="module")
def quick_run(splits, weights):
    return _train(QUICK, splits, weights)


@pytest.fixture(scope="module")
def rich_run(splits, weights):
    return _train(RICH, splits, weights, augmentation=AUGMENTATION)


def test_history_has_every_metric_each_epoch(quick_run):
    result, recorder = quick_run
    assert [m["epoch"] for m in result.history] == [1, 2, 3, 4, 5]
    assert recorder.metrics == result.history  # report is called once per epoch, with that epoch's metrics
    assert result.final == result.history[-1]
    for metrics in result.history:
        assert set(metrics) == METRIC_KEYS
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
        for key in ("val_accuracy", "val_macro_f1", "val_weighted_f1", "test_accuracy", "best_val_accuracy"):
            assert 0.0 <= metrics[key] <= 1.0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.final["best_val_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_best_epoch_is_the_best_validation_epoch_ties_to_lower_loss(quick_run):
    history = quick_run[0].history
    for n, metrics in enumerate(history, start=1):
        so_far = [(m["val_accuracy"], -m["val_loss"]) for m in history[:n]]
        best = max(so_far)
        assert metrics["best_val_accuracy"] == best[0] and metrics["best_val_loss"] == -best[1]
        assert metrics["best_epoch"] == so_far.index(best) + 1


def test_test_metrics_belong_to_the_best_epoch(quick_run, splits, weights):
    """Evaluate each epoch's checkpointed model on the test split: the reported test metrics
    are those of the best epoch's model, not of the current one."""
    result, recorder = quick_run
    model = build_transfer(TrialConfig.from_dict(QUICK), len(splits.train.classes), state_dict=weights).model
    test_of_epoch = []
    for state in recorder.states:
        model.load_state_dict(state["model"])
        test_of_epoch.append(evaluate(model, splits.test, CPU))
    assert any(m["best_epoch"] < m["epoch"] for m in result.history)  # some epoch was not the best
    for metrics in result.history:
        best = test_of_epoch[metrics["best_epoch"] - 1]
        for key, value in best.items():
            assert metrics[f"test_{key}"] == pytest.approx(value, rel=1e-6, abs=1e-9), (metrics["epoch"], key)


def test_same_seed_gives_identical_history(rich_run, splits, weights):
    first, _ = rich_run
    second, _ = _train(RICH, splits, weights, augmentation=AUGMENTATION)
    assert _without_time(first.history) == _without_time(second.history)
    other, _ = _train({**RICH, "seed": 2}, splits, weights, augmentation=AUGMENTATION)
    assert [m["train_loss"] for m in other.history] != [m["train_loss"] for m in first.history]


def test_resume_after_epoch_one_matches_an_uninterrupted_run(rich_run, splits, weights, tmp_path):
    full, recorder = rich_run
    # Round-trip the checkpoint through a file, as the Ray trainable does.
    path = tmp_path / "checkpoint.pt"
    torch.save(recorder.states[0], path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)

    resumed, resumed_recorder = _train(RICH, splits, weights, augmentation=AUGMENTATION, resume=checkpoint)
    assert [m["epoch"] for m in resumed_recorder.metrics] == [2, 3]  # only the epochs left are reported
    assert _without_time(resumed.history) == _without_time(full.history)
    for state, expected in zip(resumed_recorder.states, recorder.states[1:]):
        for key, value in expected["model"].items():
            assert torch.equal(state["model"][key], value), key


def test_resume_from_the_last_epoch_trains_no_more(splits, weights):
    config = {**QUICK, "epochs": 2}
    full, recorder = _train(config, splits, weights)
    resumed, resumed_recorder = _train(config, splits, weights, resume=recorder.states[-1])
    assert resumed_recorder.metrics == []
    assert resumed.history == full.history


def test_nan_training_loss_raises_diverged_error_naming_the_epoch(splits, weights):
    recorder = Recorder()
    config = TrialConfig.from_dict({**QUICK, "freeze_blocks": 0, "lr": 1e20})
    with pytest.raises(TrialDivergedError, match=r"training loss became nan at epoch 1 step \d+ \(lr=1e\+20") as error:
        train_trial(config, splits, state_dict=weights, report=recorder, device=CPU)
    assert isinstance(error.value, NbtlError) and "\n" not in str(error.value)
    assert "lower the learning rates" in str(error.value)
    assert recorder.metrics == []


def test_nan_validation_loss_raises_diverged_error_naming_the_epoch(splits, weights):
    config = TrialConfig.from_dict({**QUICK, "lr": 1e30})
    with pytest.raises(TrialDivergedError, match=r"validation loss became nan at epoch 1: lower the learning rates"):
        train_trial(config, splits, state_dict=weights, device=CPU)


def test_each_epoch_hands_its_freed_memory_back_after_its_report(splits, weights, monkeypatch):
    """Issue 18's scale run: trial workers held 2.3-2.5 GB anonymous memory, much of it freed activations glibc kept;
    after each epoch's report the trial calls nbtl.data.images.trim_heap (glibc's malloc_trim), cheaply: no gc pass."""
    import nbtl.train
    from nbtl.data.images import trim_heap

    recorder, calls = Recorder(), []

    def spy(collect=True):
        calls.append((len(recorder.metrics), collect, trim_heap(collect=collect)))
        return calls[-1][2]

    monkeypatch.setattr(nbtl.train, "trim_heap", spy)
    config = TrialConfig.from_dict({**QUICK, "epochs": 2})
    train_trial(config, splits, state_dict=weights, report=recorder, device=CPU)
    assert calls == [(1, False, True), (2, False, True)]
