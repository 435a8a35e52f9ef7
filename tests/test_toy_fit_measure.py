"""A new fit measure is one file: this one registers the leave-one-out accuracy of a nearest-class-mean classifier
on the features (each image is classified by the closest class mean computed without it: the nearest-centroid
probe of few-shot learning, Snell et al. 2017's prototypes) with ``nbtl.fit.register_fit_measure``, and without
touching any other file the fit table measures it on real features of a real backbone, the backbone signals and the
rules read it, a learned recommender is fitted on it, the shipped recommender still loads, and the registry's common
checks hold for it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_fit import check_fit_measure
from test_heuristics import synthetic_rows

from nbtl.data import load_dataset
from nbtl.fit import MeasureError, block_features, fit_table, get_fit_measure, register_fit_measure, remove_fit_measure
from nbtl.fit._validation import check_labels, check_matrix
from nbtl.heuristics import backbone_signals
from nbtl.heuristics.learned import LearnedRecommender, default_inputs, default_recommender_path, fit_recommender
from nbtl.heuristics.recommend import measure_task
from nbtl.heuristics.rules import parse_rules
from nbtl.heuristics.signals import backbone_signal_names


def centroid_accuracy(features, labels) -> float:
    """Leave-one-out accuracy of the nearest class mean (Euclidean): order-free and exact, no folds to draw."""
    matrix = check_matrix(features)
    codes, n_classes = check_labels(labels, len(matrix))
    counts = np.bincount(codes, minlength=n_classes).astype(float)
    sums = np.zeros((n_classes, matrix.shape[1]))
    np.add.at(sums, codes, matrix)
    # Distance of each image to every class mean, its own class's mean taken without it.
    means = sums / counts[:, None]
    distances = ((matrix[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    own = np.arange(len(codes)), codes
    alone = counts[codes] <= 1
    without = (sums[codes] - matrix) / np.maximum(counts[codes] - 1, 1)[:, None]
    distances[own] = np.where(alone, np.inf, ((matrix - without) ** 2).sum(axis=1))
    return float((distances.argmin(axis=1) == codes).mean())


@pytest.fixture(scope="module", autouse=True)
def centroid():
    """Registered for this file's tests only (the registry is the process's)."""
    register_fit_measure("centroid_accuracy", signal="centroid", learned=True, function=centroid_accuracy)
    yield "centroid_accuracy"
    remove_fit_measure("centroid_accuracy")


def test_a_registered_measure_passes_the_common_checks(centroid):
    assert check_fit_measure(centroid) > 0.9  # the well-separated clusters of the common check
    with pytest.raises(MeasureError, match="already registered"):
        register_fit_measure(centroid, function=centroid_accuracy)
    with pytest.raises(MeasureError, match="signal 'probe' is taken"):
        register_fit_measure("other_probe", signal="probe", function=centroid_accuracy)
    with pytest.raises(MeasureError, match="nbtl's own"):
        remove_fit_measure("logme")


@pytest.fixture(scope="module")
def lite0_fit(tmp_path_factory):
    """Features of every block of EfficientNet-Lite0 (packaged ImageNet weights) on 100 real digits images."""
    digits = load_dataset("digits", image_size=32, per_class=10)
    features = block_features(digits, "efficientnet_lite0", cache_dir=tmp_path_factory.mktemp("f"), progress=False)
    return features, fit_table(features)


def test_the_fit_table_and_the_signals_measure_it_on_real_features(centroid, lite0_fit):
    features, table = lite0_fit
    assert centroid in table.columns and table[centroid].notna().all()
    assert table[centroid].max() > 0.3  # ImageNet features beat chance (10 classes) at some block
    assert table[centroid].iloc[-1] == pytest.approx(centroid_accuracy(features.blocks[-1], features.labels))
    signals = backbone_signals(table)
    assert set(signals) == set(backbone_signal_names()) >= {"centroid_best", "centroid_last", "logme_best"}
    assert signals["centroid_best"] == pytest.approx(table[centroid].max())
    assert math.isfinite(backbone_signals(table, fit_curve=centroid)["fit_peak_block"])


def test_measure_task_gives_its_signal_to_the_recommend_step(centroid, tmp_path, monkeypatch):
    monkeypatch.setenv("NBTL_CACHE_DIR", str(tmp_path / "cache"))
    task = measure_task("digits", ["efficientnet_lite0"], image_size=32, per_class=12, log=lambda line: None)
    assert 0.0 < task.backbones["efficientnet_lite0"]["centroid_best"] <= 1.0
    assert "centroid_best" in task.row("efficientnet_lite0")


def test_rules_may_read_it(centroid):
    rules = parse_rules(
        {
            "fit_curve": centroid,
            "rank_by": "centroid_best",
            "defaults": {"config": {"lr": 0.01}},
            "rules": [
                {
                    "id": "separable",
                    "when": {"centroid_best": {"min": 0.9}},
                    "set": {"freeze_blocks": {"signal": "fit_peak_block", "plus": 1}},
                    "because": "the class means already separate the data",
                    "evidence": ["this test"],
                }
            ],
        }
    )
    assert rules.fit_curve == centroid and rules.rank_by == "centroid_best"
    with pytest.raises(Exception, match="not a block fit measure"):
        parse_rules({"fit_curve": "leep", "defaults": {"config": {}}})


def test_a_learned_recommender_reads_it_and_the_shipped_one_still_loads(centroid, tmp_path):
    assert "centroid_best" in default_inputs()
    rows = [{**row, "centroid_best": row["probe_best"] - 0.05} for row in synthetic_rows()]
    model = fit_recommender(rows, groups=[row["task"] for row in rows])
    assert "centroid_best" in model.inputs
    again = LearnedRecommender.load(model.save(tmp_path / "recommender.json"))
    assert again.inputs == model.inputs
    np.testing.assert_allclose(again.predict_rows(rows[:5]), model.predict_rows(rows[:5]), atol=1e-12)
    shipped = LearnedRecommender.load(default_recommender_path())  # fitted without it: its own inputs
    assert "centroid_best" not in shipped.inputs
    assert np.all(np.isfinite(shipped.predict_rows(rows[:5])))
    assert get_fit_measure(centroid).learned_input == "centroid_best"
