"""nbtl.heuristics: signals from fit tables, rules as data, the learned recommender and its JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nbtl.config import TrialConfig
from nbtl.heuristics import (HeuristicsError, LearnedRecommender, backbone_signals, dataset_signals, fit_recommender,
                             load_rules, parse_rules, rank_backbones)
from nbtl.heuristics.learned import INPUTS, encode
from nbtl.heuristics.recommend import TaskFit, load_recommended_configs, recommend

REPO = Path(__file__).resolve().parents[1]


def table(logme, probe, backbone="efficientnet_lite0"):
    return pd.DataFrame({"backbone": backbone, "block": range(len(logme)), "logme": logme,
                         "linear_probe_accuracy": probe, "knn_accuracy": probe, "leep": -2.0, "nce": -1.5})


META = {"images_per_class_mean": 20.0, "n_classes": 10, "n_images": 200, "grayscale": False,
        "original_height": 96, "original_width": 128, "image_size": 64}


def test_signals_find_the_peak_of_the_fit_curve_with_tolerance():
    curve = [0.1, 0.3, 0.59, 0.6, 0.4, 0.2]
    signals = backbone_signals(table(curve, [0.5, 0.6, 0.8, 0.85, 0.7, 0.6]))
    assert signals["fit_peak_block"] == 3 and signals["fit_peak_fraction"] == pytest.approx(4 / 6)
    assert signals["probe_best"] == 0.85 and signals["source_gap"] == pytest.approx(0.15)
    assert signals["logme_last"] == 0.2 and signals["num_blocks"] == 6
    # within 5 % of the range (0.5) of the top: block 2 (0.59) counts as the peak
    assert backbone_signals(table(curve, [0.5] * 6), tolerance=0.05)["fit_peak_block"] == 2
    # rows out of order are sorted by block first
    assert backbone_signals(table(curve, [0.5] * 6).iloc[::-1])["fit_peak_block"] == 3
    with pytest.raises(HeuristicsError, match="no finite 'logme'"):
        backbone_signals(table([math.nan] * 3, [0.5] * 3))


def test_dataset_signals_and_backbone_ranking():
    signals = dataset_signals(META)
    assert signals == {"images_per_class": 20.0, "n_classes": 10.0, "n_images": 200.0, "grayscale": 0.0,
                       "original_side": 96.0, "image_size": 64.0}
    ranked = rank_backbones({"a": {"logme_best": 0.1}, "b": {"logme_best": 0.4}, "c": {"logme_best": math.nan}})
    assert ranked == ["b", "a", "c"]
    with pytest.raises(HeuristicsError, match="images_per_class_mean"):
        dataset_signals({"n_classes": 3})


def test_shipped_rules_parse_and_every_rule_cites_evidence():
    rules = load_rules()
    assert rules.rules and all(rule.evidence and rule.because for rule in rules.rules)
    text = (REPO / "heuristics" / "rules.yaml").read_text()
    assert yaml.safe_load(text)["defaults"]["config"]["transfer_blocks"] == "all"


def test_rules_near_source_colour_few_images_freeze_below_the_peak_and_pull_to_pretrained():
    rules = load_rules()
    signals = {**dataset_signals(META), **backbone_signals(table([0.1, 0.3, 0.6, 0.5], [0.7, 0.8, 0.9, 0.88]))}
    config, reasons = rules.apply(signals, "efficientnet_lite0")
    assert config["transfer_blocks"] == 3          # peak at block 2: blocks 0..2 transferred, block 3 re-initialised
    assert config["freeze_blocks"] == 1            # few images: blocks below the peak frozen
    assert config["l2sp_alpha"] == 0.1 and config["l2_beta"] == 0.0
    assert reasons["freeze_blocks"].startswith("few-images-freeze (images_per_class=20")
    assert reasons["transfer_blocks"].startswith("transfer-to-fit-peak (fit_peak_block=2)")
    TrialConfig.from_dict(config)


def test_rules_far_grayscale_data_moves_weight_to_l2_and_trains_every_block():
    rules = load_rules()
    meta = {**META, "grayscale": True, "original_height": 28, "original_width": 28, "images_per_class_mean": 300}
    signals = {**dataset_signals(meta), **backbone_signals(table([0.1, 0.2, 0.3, 0.4], [0.4, 0.5, 0.55, 0.6]))}
    config, reasons = rules.apply(signals, "efficientnet_lite0")
    assert config["transfer_blocks"] == 4 and config["freeze_blocks"] == 0
    assert config["l2sp_alpha"] == 0.0 and config["l2_beta"] == 1e-4 and config["lr_decay"] == 0.7
    assert reasons["lr_decay"].startswith("far-from-source-l2 (source_gap=0.4")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["rules"][0].update(when={"sunshine": {"min": 1}}), "unknown signal 'sunshine'"),
    (lambda d: d["rules"][0].pop("evidence"), "needs 'evidence'"),
    (lambda d: d["rules"][0]["set"].update(learning_speed=2), "unknown config key 'learning_speed'"),
    (lambda d: d["rules"][1].update(id=d["rules"][0]["id"]), "is used twice"),
    (lambda d: d["rules"][0]["set"].update(lr={"scale": 2, "signal": "num_blocks"}), "exactly one of signal or scale"),
    (lambda d: d.update(rank_by="colour"), "rank_by 'colour'"),
])
def test_bad_rules_are_named(change, message):
    document = yaml.safe_load((REPO / "heuristics" / "rules.yaml").read_text())
    change(document)
    with pytest.raises(HeuristicsError, match=message):
        parse_rules(document, "rules.yaml")


def synthetic_rows(seed=0, tasks=4, per_task=30):
    """Trials whose accuracy peaks at lr = 0.03 and falls as more blocks past the fit peak are transferred."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        task = {"task": f"t{t}", "images_per_class": float(20 + 40 * t), "n_classes": 10.0, "grayscale": float(t % 2),
                "original_side": 28.0, "image_size": 32.0, "num_blocks": 9.0, "fit_peak_block": float(4 + t % 3),
                "fit_peak_fraction": (5 + t % 3) / 9, "logme_best": 0.2 + 0.05 * t, "probe_best": 0.8 + 0.03 * t,
                "knn_best": 0.7 + 0.03 * t, "leep": -2.0}
        for _ in range(per_task):
            lr = float(10 ** rng.uniform(-3, -1))
            transfer = int(rng.integers(0, 10))
            config = TrialConfig(lr=lr, transfer_blocks=transfer, freeze_blocks=int(rng.integers(0, transfer + 1)),
                                 head=str(rng.choice(["linear", "mlp", "spinal"])), l2sp_alpha=0.01).to_dict()
            past = max(0, transfer - (task["fit_peak_block"] + 1))
            accuracy = 0.9 + 0.02 * t - 0.1 * (math.log10(lr) - math.log10(0.03)) ** 2 - 0.02 * past
            rows.append({**task, **config, "best_val_accuracy": accuracy + rng.normal(0, 0.002)})
    return rows


def test_learned_recommender_fits_ranks_and_round_trips_through_json(tmp_path):
    rows = synthetic_rows()
    model = fit_recommender(rows, groups=[r["task"] for r in rows])
    assert model.info["selection"] == "leave-one-task-out"
    # on tasks it did not see, it orders the trials nearly as their accuracy does
    assert model.info["cv_spearman_within_task"] > 0.9
    probe = [{**rows[0], "lr": lr, "transfer_blocks": 5} for lr in (0.001, 0.01, 0.03, 0.1)]
    predicted = model.predict_rows(probe)
    assert int(np.argmax(predicted)) == 2 and np.all((predicted >= 0) & (predicted <= 1))
    path = model.save(tmp_path / "recommender.json")
    document = json.loads(path.read_text())         # plain JSON, nothing pickled
    assert document["inputs"] == list(INPUTS) and len(document["coef"]) == len(document["powers"])
    again = LearnedRecommender.load(path)
    assert np.allclose(again.predict_rows(probe), predicted, atol=1e-12)
    assert encode(probe[0]).shape == (len(INPUTS),)


def test_learned_recommender_refuses_bad_files_and_too_little_data(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(HeuristicsError, match="not an nbtl recommender"):
        LearnedRecommender.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(HeuristicsError, match="not JSON"):
        LearnedRecommender.load(tmp_path / "broken.json")
    with pytest.raises(HeuristicsError, match="at least 5"):
        fit_recommender(synthetic_rows()[:3])


def test_recommend_takes_the_portfolio_config_predicted_best_over_weak_rules_and_says_why(tmp_path):
    rows = synthetic_rows()
    model = fit_recommender(rows, groups=[r["task"] for r in rows])
    assert len(model.portfolio) == 3 * 4 and all(abs(math.log10(p["config"]["lr"] / 0.03)) < 0.6 for p in model.portfolio)
    signals = {k: rows[0][k] for k in ("num_blocks", "fit_peak_block", "fit_peak_fraction", "logme_best", "probe_best",
                                        "knn_best", "leep")}
    signals.update(logme_last=0.1, probe_last=0.7, nce=-1.0, source_gap=1 - signals["probe_best"])
    dataset = {k: rows[0][k] for k in ("images_per_class", "n_classes", "grayscale", "original_side", "image_size")}
    task = TaskFit(data="synthetic", dataset_name="synthetic", meta={}, dataset={**dataset, "n_images": 200.0},
                   backbones={"efficientnet_lite0": signals}, tables=pd.DataFrame(), seconds=0.0)
    document = yaml.safe_load((REPO / "heuristics" / "rules.yaml").read_text())
    document["defaults"]["config"]["lr"] = 0.001           # rules whose lr is far from the synthetic optimum (0.03)
    document["rules"] = [r for r in document["rules"] if "lr" not in r["set"]]
    result = recommend(task, parse_rules(document), model,
                       data_settings={"image_size": 32, "per_class": None, "classes": None, "seed": 0})
    rules_only, learned = result.configs
    assert learned["source"] == "learned recommender" and rules_only["source"] == "rules"
    assert learned["predicted_val_accuracy"] > rules_only["predicted_val_accuracy"] + 0.05
    assert rules_only["config"]["lr"] == 0.001 and abs(math.log10(learned["config"]["lr"] / 0.03)) < 0.6
    assert set(learned["reasons"]) >= set(learned["config"])       # a reason for every setting
    changed = [k for k in learned["config"] if learned["config"][k] != rules_only["config"].get(k)]
    assert "lr" in changed and all(learned["reasons"][k].startswith("learned recommender") for k in changed)
    out = tmp_path / "recommended.yaml"
    out.write_text(result.to_yaml())
    configs = load_recommended_configs(out)
    assert configs[1]["lr"] == learned["config"]["lr"] and configs[0]["lr"] == 0.001 and len(configs) == 2
    # a portfolio without a better config leaves the rules' config alone, and says so
    model.portfolio = [p for p in model.portfolio if p["config"]["lr"] < 0.002]
    alone = recommend(task, parse_rules(document), model)
    assert [c["source"] for c in alone.configs] == ["rules"] and "portfolio" in alone.notes[0]


def test_load_recommended_configs_reads_a_plain_config_and_names_bad_keys(tmp_path):
    (tmp_path / "best.yaml").write_text("backbone: efficientnet_lite0\nlr: 0.02\n")
    assert load_recommended_configs(tmp_path / "best.yaml")[0]["lr"] == 0.02
    (tmp_path / "bad.yaml").write_text("backbone: efficientnet_lite0\nlearning_rate: 0.02\n")
    with pytest.raises(Exception, match="unknown key 'learning_rate'"):
        load_recommended_configs(tmp_path / "bad.yaml")
    with pytest.raises(HeuristicsError, match="cannot read"):
        load_recommended_configs(tmp_path / "missing.yaml")


def test_shipped_rules_keep_strong_probe_features_and_warm_up_the_head():
    """The probe is a floor: where the last block's linear probe is strong on colour data the rules freeze all
    but the top blocks; with a weak probe, or grayscale data, they do not. Every config warms the head up (LP-FT)."""
    from nbtl.heuristics import load_rules

    rules = load_rules()
    signals = dict(images_per_class=100, n_classes=4, n_images=400, grayscale=0, original_side=200, image_size=64,
                   num_blocks=9, fit_peak_block=8, fit_peak_fraction=1.0, logme_best=1.0, logme_last=1.0,
                   probe_best=0.96, probe_last=0.95, knn_best=0.9, leep=-1.0, nce=-1.0, source_gap=0.04)
    strong, reasons = rules.apply(signals, "efficientnet_lite0")
    assert strong["freeze_blocks"] == 7 and reasons["freeze_blocks"].startswith("strong-probe-keep-features")
    assert strong["head_warmup_epochs"] == 1
    weak, _ = rules.apply({**signals, "probe_last": 0.7, "probe_best": 0.7, "source_gap": 0.3}, "efficientnet_lite0")
    gray, _ = rules.apply({**signals, "grayscale": 1}, "efficientnet_lite0")
    assert weak["freeze_blocks"] < 7 and gray["freeze_blocks"] == 0
    assert weak["head_warmup_epochs"] == gray["head_warmup_epochs"] == 1
