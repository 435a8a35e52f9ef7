"""The linear probe is a real floor (nbtl.fit.probe): fitted by L-BFGS with a cross-validated L2 strength, sane
validation loss, calibrated, at least as accurate as the SGD probe nbtl trained before, and handed over whole."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from nbtl.config import TrialConfig
from nbtl.fit.probe import expected_calibration_error, fit_linear_probe
from nbtl.heuristics.recipes import probe_config
from nbtl.train import train_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_expected_calibration_error_of_known_cases():
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[labels], labels) == pytest.approx(0.0)  # sure and right
    assert expected_calibration_error(np.eye(2)[1 - labels], labels) == pytest.approx(1.0)  # sure and wrong
    # 0.75 confident, right 3 times in 4: calibrated
    p = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(p, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error(np.full((2, 2), np.nan), np.array([0, 1])))


def test_the_sweep_picks_a_strong_penalty_for_noise_and_a_weak_one_for_signal():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    noise = rng.normal(size=(90, 200))
    signal = noise.copy()
    signal[:, :3] += 4 * np.eye(3)[labels]
    on_noise = fit_linear_probe(noise, labels, 3, random_state=0)
    on_signal = fit_linear_probe(signal, labels, 3, random_state=0)
    assert on_noise.C < on_signal.C and on_noise.folds == 5
    assert on_noise.cv_log_loss >= np.log(3) - 0.1  # noise: no better than guessing ...
    assert on_signal.cv_log_loss < 0.5  # ... signal: confident and right
    # a class missing from training is never predicted; a binary task has two logit rows
    absent = fit_linear_probe(signal, labels, 4, random_state=0)
    assert absent.weight.shape == (4, 200) and (absent.logits(signal).argmax(1) != 3).all()
    binary = fit_linear_probe(signal[labels < 2], labels[labels < 2], 2, random_state=0)
    assert (binary.logits(signal[labels < 2]).argmax(1) == labels[labels < 2]).mean() > 0.95
    tiny = fit_linear_probe(signal[[0, 30, 60]], np.array([0, 1, 2]), 3)  # one image a class: no sweep
    assert tiny.folds == 0 and tiny.C == 1.0


@pytest.fixture(scope="module")
def smoke_features(weights, one_torch_thread):
    """Pooled features of the benchmark's smoke tasks (tuning / smoke data only) for two seeds."""
    from probe_floor import pooled_features
    from tasks import SMOKE_TASK, TUNING_TASKS

    digits = next(t for t in TUNING_TASKS if t.name == "digits-pc30-32")
    return [(task.name, seed, pooled_features(task, seed, weights)) for task in (SMOKE_TASK, digits) for seed in (0, 1)]


def test_the_probe_is_a_floor_calibrated_and_as_accurate_as_the_sgd_probe(smoke_features):
    from probe_floor import lbfgs_probe, scores, sgd_probe

    eces = []
    for name, seed, (train, val, test, n_classes) in smoke_features:
        new = scores(lbfgs_probe(*train, n_classes, seed), val, test)
        old = scores(sgd_probe(*train, n_classes, seed), val, test)
        one_image = 1.0 / len(test[1])
        assert new["test_accuracy"] >= old["test_accuracy"] - one_image - 1e-9, (name, seed, new, old)
        assert new["val_loss"] < 1.5, (name, seed, new)  # sane: no logits in the hundreds
        assert new["test_ece"] < 0.25, (name, seed, new)  # of 8-18 test images: one wrong and sure is 0.06-0.12
        eces.append((new["test_ece"], old["test_ece"]))
    assert np.mean([n for n, _ in eces]) <= np.mean([o for _, o in eces]) + 0.02


def test_the_sweep_stops_past_its_lowest_loss_and_chooses_as_the_full_sweep(smoke_features):
    """Stopping the walk up the Cs three steps past the lowest held-out loss leaves the chosen probe as the full
    sweep's (``patience=len(Cs)``), on real pooled features of the smoke and a tuning task."""
    from nbtl.fit.probe import PROBE_CS

    for name, seed, ((views, labels), _, _, n_classes) in smoke_features:
        features = views[0]  # the clean view, as nbtl.train fits it
        stopped = fit_linear_probe(features, labels, n_classes, random_state=seed)
        full = fit_linear_probe(features, labels, n_classes, random_state=seed, patience=len(PROBE_CS))
        assert (stopped.C, stopped.cv_log_loss) == (full.C, full.cv_log_loss), (name, seed)
        np.testing.assert_array_equal(stopped.weight, full.weight)


def test_a_probe_trial_is_fitted_once_scores_the_same_each_epoch_and_hands_over(splits, weights, one_torch_thread):
    from nbtl.models.classifier import Member, classifier_of, trained_state_dict

    config = TrialConfig.from_dict({**probe_config("efficientnet_lite0"), "epochs": 3, "batch_size": 16, "seed": 1})
    for cache in (True, False):  # the probe is fitted on pooled features with or without the prefix store
        result = train_trial(config, splits, augmentation={"crop_padding": 4}, state_dict=weights, cache_prefix=cache)
        first = result.history[0]
        assert all(m["val_loss"] == first["val_loss"] for m in result.history)
        assert first["val_loss"] < 1.5 and 0 <= first["val_ece"] <= 1 and first["test_ece"] == first["test_ece"]
        if cache:
            cached = result.final
        else:
            assert result.final["test_accuracy"] == pytest.approx(cached["test_accuracy"])
    state = trained_state_dict(config.to_dict(), len(splits.train.classes), result.best_weights, weights)
    classifier = classifier_of([Member(config.to_dict(), state, "probe")], splits.train.classes, 32)
    predicted = classifier.logits(splits.test.images).argmax(1).numpy()
    assert accuracy_score(splits.test.labels.numpy(), predicted) == pytest.approx(result.final["test_accuracy"])
