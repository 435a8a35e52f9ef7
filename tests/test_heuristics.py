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
from nbtl.errors import ConfigError
from nbtl.heuristics import (
    HeuristicsError,
    LearnedRecommender,
    backbone_signals,
    dataset_signals,
    fit_recommender,
    load_rules,
    parse_rules,
    rank_backbones,
)
from nbtl.heuristics.learned import default_inputs, encode
from nbtl.heuristics.recommend import TaskFit, load_recommended_configs, recommend

REPO = Path(__file__).resolve().parents[1]


def table(logme, probe, backbone="efficientnet_lite0"):
    return pd.DataFrame(
        {
            "backbone": backbone,
            "block": range(len(logme)),
            "logme": logme,
            "linear_probe_accuracy": probe,
            "knn_accuracy": probe,
            "leep": -2.0,
            "nce": -1.5,
        }
    )


META = {
    "images_per_class_mean": 20.0,
    "n_classes": 10,
    "n_images": 200,
    "grayscale": False,
    "original_height": 96,
    "original_width": 128,
    "image_size": 64,
}


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
    assert signals == {
        "images_per_class": 20.0,
        "n_classes": 10.0,
        "n_images": 200.0,
        "grayscale": 0.0,
        "original_side": 96.0,
        "image_size": 64.0,
    }
    ranked = rank_backbones({"a": {"logme_best": 0.1}, "b": {"logme_best": 0.4}, "c": {"logme_best": math.nan}})
    assert ranked == ["b", "a", "c"]
    with pytest.raises(HeuristicsError, match="images_per_class_mean"):
        dataset_signals({"n_classes": 3})


def test_shipped_rules_load_cite_evidence_and_give_valid_configs():
    """The shipped file parses, every rule says why and cites evidence, and whatever the signals
    (near / far from the source, few / many images, colour / grayscale) the outcome is a valid config."""
    rules = load_rules()
    assert rules.rules and all(rule.evidence and rule.because for rule in rules.rules)
    rng = np.random.default_rng(0)
    for _ in range(40):
        meta = {
            **META,
            "grayscale": bool(rng.integers(2)),
            "images_per_class_mean": float(rng.integers(3, 2000)),
            "original_height": int(rng.integers(8, 600)),
            "original_width": int(rng.integers(8, 600)),
        }
        blocks = int(rng.integers(4, 12))
        probe = list(rng.uniform(0.1, 1.0, blocks))
        signals = {**dataset_signals(meta), **backbone_signals(table(list(rng.normal(size=blocks)), probe))}
        config, reasons = rules.apply(signals, "efficientnet_lite0")
        TrialConfig.from_dict(config)
        assert 0 <= config["freeze_blocks"] <= config["transfer_blocks"] <= blocks
        assert set(reasons) >= set(config) and all(reasons.values())


# --- the rule engine, on small rule files written here ----------------------------------------

SIGNALS = {
    "images_per_class": 20.0,
    "n_classes": 10.0,
    "n_images": 200.0,
    "grayscale": 0.0,
    "original_side": 96.0,
    "image_size": 64.0,
    "num_blocks": 6.0,
    "fit_peak_block": 3.0,
    "fit_peak_fraction": 4 / 6,
    "logme_best": 0.6,
    "logme_last": 0.2,
    "probe_best": 0.85,
    "probe_last": 0.8,
    "knn_best": 0.8,
    "leep": -2.0,
    "nce": -1.5,
    "source_gap": 0.15,
}
DEFAULTS = {"transfer_blocks": "all", "freeze_blocks": 0, "lr": 0.01, "l2sp_alpha": 0.0, "epochs": 3, "batch_size": 16}


def rule(rule_id, sets, **conditions):
    return {"id": rule_id, "set": sets, "because": f"because {rule_id}", "evidence": [f"paper {rule_id}"], **conditions}


def write_rules(tmp_path, rules, defaults=None, **top):
    document = {
        "version": 1,
        "defaults": {"config": {**DEFAULTS, **(defaults or {})}, "because": "the default"},
        "rules": rules,
        **top,
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_rules(path)


def test_rule_conditions_all_any_bounds_inclusive_and_missing_signals(tmp_path):
    rules = write_rules(
        tmp_path,
        [
            rule("bounds", {"epochs": 4}, when={"images_per_class": {"min": 20, "max": 20}, "grayscale": 0}),
            rule("any", {"batch_size": 8}, when_any=[{"grayscale": 1}, {"original_side": {"max": 96}}]),
            rule("both", {"lr": 0.02}, when={"n_classes": {"min": 5}}, when_any=[{"grayscale": 1}]),
            rule("nan", {"l2sp_alpha": 0.5}, when={"leep": {"max": 0}}),
        ],
    )
    config, reasons = rules.apply(SIGNALS, "b")
    assert config["epochs"] == 4 and config["batch_size"] == 8  # min == max == value holds; one group of any holds
    assert config["lr"] == 0.01  # when holds but no group of when_any does
    assert config["l2sp_alpha"] == 0.5 and reasons["lr"] == "the default"
    config, _ = rules.apply({**SIGNALS, "images_per_class": 20.5, "original_side": 97.0, "grayscale": 1.0}, "b")
    assert config["epochs"] == 3 and config["batch_size"] == 8 and config["lr"] == 0.02
    config, _ = rules.apply({**SIGNALS, "original_side": 97.0, "leep": math.nan}, "b")
    assert config["batch_size"] == 16 and config["l2sp_alpha"] == 0.0  # a NaN signal meets no bound
    missing = {k: v for k, v in SIGNALS.items() if k != "leep"}
    assert rules.apply(missing, "b")[0]["l2sp_alpha"] == 0.0  # nor does a missing one


def test_later_rules_override_earlier_ones_and_the_last_is_the_reason(tmp_path):
    rules = write_rules(
        tmp_path,
        [
            rule("first", {"lr": 0.1, "epochs": 5}),
            rule("second", {"lr": 0.2}, when={"n_classes": {"min": 2}}),
            rule("third", {"lr": 0.3}, when={"n_classes": {"max": 2}}),  # does not hold: no effect
        ],
    )
    config, reasons = rules.apply(SIGNALS, "b")
    assert config["lr"] == 0.2 and config["epochs"] == 5
    assert reasons["lr"] == "second (n_classes=10): because second"
    assert reasons["epochs"].startswith("first") and reasons["batch_size"] == "the default"
    reordered = write_rules(tmp_path, [rule("second", {"lr": 0.2}), rule("first", {"lr": 0.1})])
    assert reordered.apply(SIGNALS, "b")[0]["lr"] == 0.1


def test_settings_from_signals_and_scales_are_rounded_and_clamped(tmp_path):
    rules = write_rules(
        tmp_path,
        [
            rule(
                "peak",
                {
                    "transfer_blocks": {"signal": "fit_peak_fraction", "plus": 1.4},  # 0.667 + 1.4 -> 2
                    "head_width": {"signal": "n_classes", "plus": 100, "max": 64},  # clamped to 64
                    "l2sp_alpha": {"signal": "leep", "min": 0.001},
                },
            ),  # -2 clamped to 0.001
            rule("faster", {"lr": {"scale": 10, "max": 0.05}, "epochs": {"scale": 1.5}}),  # 0.1 -> 0.05; 4.5 -> 4
        ],
    )
    config, _ = rules.apply(SIGNALS, "b")
    assert config["transfer_blocks"] == 2 and isinstance(config["transfer_blocks"], int)
    assert config["head_width"] == 64 and config["l2sp_alpha"] == 0.001
    assert config["lr"] == pytest.approx(0.05) and config["epochs"] == 4 and isinstance(config["epochs"], int)


def test_transfer_and_freeze_blocks_are_clamped_to_the_backbone(tmp_path):
    rules = write_rules(tmp_path, [rule("freeze", {"freeze_blocks": 9})], defaults={"transfer_blocks": "all"})
    config, _ = rules.apply(SIGNALS, "b")
    assert config["transfer_blocks"] == 6 and config["freeze_blocks"] == 6  # 'all' = num_blocks; freeze <= transfer
    rules = write_rules(
        tmp_path,
        [
            rule("deep", {"transfer_blocks": {"signal": "fit_peak_block", "plus": 10}}),
            rule("freeze", {"freeze_blocks": 4}),
        ],
    )
    config, _ = rules.apply({**SIGNALS, "num_blocks": 5.0}, "b")
    assert config["transfer_blocks"] == 5 and config["freeze_blocks"] == 4


def test_rule_outcomes_that_are_not_valid_configs_are_refused(tmp_path):
    rules = write_rules(tmp_path, [rule("negative", {"lr": {"signal": "leep"}})])
    with pytest.raises(ConfigError, match="lr must be > 0"):
        rules.apply(SIGNALS, "b")
    rules = write_rules(tmp_path, [rule("scale-a-name", {"head": {"scale": 2}})])
    with pytest.raises(HeuristicsError, match="rule scale-a-name: cannot scale head"):
        rules.apply(SIGNALS, "b")


def test_unreadable_rule_files_are_named(tmp_path):
    with pytest.raises(HeuristicsError, match="cannot read it"):
        load_rules(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("rules: [unclosed\n")
    with pytest.raises(HeuristicsError, match="not valid YAML"):
        load_rules(tmp_path / "broken.yaml")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["rules"][0].update(when={"sunshine": {"min": 1}}), "unknown signal 'sunshine'"),
        (lambda d: d["rules"][0].update(when={"n_classes": {"above": 1}}), "unknown key 'above'"),
        (lambda d: d["rules"][0].pop("evidence"), "needs 'evidence'"),
        (lambda d: d["rules"][0]["set"].update(learning_speed=2), "unknown config key 'learning_speed'"),
        (lambda d: d["rules"][1].update(id=d["rules"][0]["id"]), "is used twice"),
        (
            lambda d: d["rules"][0]["set"].update(lr={"scale": 2, "signal": "num_blocks"}),
            "exactly one of signal or scale",
        ),
        (lambda d: d["rules"][0]["set"].update(lr={"signal": "weather"}), "reads unknown signal 'weather'"),
        (lambda d: d["defaults"]["config"].update(speed=1), "defaults.config has unknown key 'speed'"),
        (lambda d: d.update(rank_by="colour"), "rank_by 'colour'"),
    ],
)
def test_bad_rules_are_named(change, message):
    document = {
        "defaults": {"config": dict(DEFAULTS)},
        "rules": [rule("one", {"lr": 0.1}, when={"n_classes": {"min": 2}}), rule("two", {"epochs": 2})],
    }
    parse_rules(document, "rules.yaml")  # the unchanged document is valid
    change(document)
    with pytest.raises(HeuristicsError, match=message):
        parse_rules(document, "rules.yaml")


def synthetic_rows(seed=0, tasks=4, per_task=30):
    """Trials whose accuracy peaks at lr = 0.03 and falls as more blocks past the fit peak are transferred."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        task = {
            "task": f"t{t}",
            "images_per_class": float(20 + 40 * t),
            "n_classes": 10.0,
            "grayscale": float(t % 2),
            "original_side": 28.0,
            "image_size": 32.0,
            "num_blocks": 9.0,
            "fit_peak_block": float(4 + t % 3),
            "fit_peak_fraction": (5 + t % 3) / 9,
            "logme_best": 0.2 + 0.05 * t,
            "probe_best": 0.8 + 0.03 * t,
            "knn_best": 0.7 + 0.03 * t,
            "leep": -2.0,
        }
        for _ in range(per_task):
            lr = float(10 ** rng.uniform(-3, -1))
            transfer = int(rng.integers(0, 10))
            config = TrialConfig(
                lr=lr,
                transfer_blocks=transfer,
                freeze_blocks=int(rng.integers(0, transfer + 1)),
                head=str(rng.choice(["linear", "mlp", "spinal"])),
                l2sp_alpha=0.01,
            ).to_dict()
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
    document = json.loads(path.read_text())  # plain JSON, nothing pickled
    assert document["inputs"] == list(default_inputs()) and len(document["coef"]) == len(document["powers"])
    again = LearnedRecommender.load(path)
    assert np.allclose(again.predict_rows(probe), predicted, atol=1e-12)
    assert encode(probe[0]).shape == (len(default_inputs()),)


def test_learned_recommender_refuses_bad_files_and_too_little_data(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(HeuristicsError, match="not an nbtl recommender"):
        LearnedRecommender.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(HeuristicsError, match="not JSON"):
        LearnedRecommender.load(tmp_path / "broken.json")
    with pytest.raises(HeuristicsError, match="at least 5"):
        fit_recommender(synthetic_rows()[:3])


def synthetic_task(rows) -> TaskFit:
    """A measured task whose signals are those of the first synthetic task's rows."""
    signals = {
        k: rows[0][k]
        for k in ("num_blocks", "fit_peak_block", "fit_peak_fraction", "logme_best", "probe_best", "knn_best", "leep")
    }
    signals.update(logme_last=0.1, probe_last=0.7, nce=-1.0, source_gap=1 - signals["probe_best"])
    dataset = {k: rows[0][k] for k in ("images_per_class", "n_classes", "grayscale", "original_side", "image_size")}
    return TaskFit(
        data="synthetic",
        dataset_name="synthetic",
        meta={},
        dataset={**dataset, "n_images": 200.0},
        backbones={"efficientnet_lite0": signals},
        tables=pd.DataFrame(),
        seconds=0.0,
    )


def test_recommendations_are_clipped_to_the_space_and_say_so():
    """Given a space, every recommended config is a point of it (``project`` moves nothing), and each setting
    the space moved says so in its reason; the prediction is the clipped config's."""
    from nbtl.search import parse_space

    rows = synthetic_rows()
    model = fit_recommender(rows, groups=[r["task"] for r in rows])
    task = synthetic_task(rows)
    rules = parse_rules({"defaults": {"config": {**DEFAULTS, "lr": 0.001}}, "rules": [rule("epochs", {"epochs": 2})]})
    space = parse_space(
        {
            "name": "narrow",
            "parameters": {
                "backbone": "efficientnet_lite0",
                "lr": {"low": 0.002, "high": 0.004, "log": True},
                "head": {"choices": ["linear", "mlp"]},
                "epochs": 3,
            },
        }
    )
    free = recommend(task, rules, model)
    clipped = recommend(task, rules, model, space=space)
    assert [e["source"] for e in clipped.configs] == [e["source"] for e in free.configs]
    assert free.configs[0]["config"]["lr"] == 0.001 and free.configs[0]["config"]["epochs"] == 2
    for entry in clipped.configs:
        config = entry["config"]
        assert (
            0.002 <= config["lr"] <= 0.004
            and config["epochs"] == 3
            and config.get("head", TrialConfig().head) in ("linear", "mlp")
        )
        assert space.project(config)[1] == [], entry
        TrialConfig.from_dict(config)
        assert entry["predicted_val_accuracy"] == pytest.approx(
            model.predict_rows([{**config, **task.row("efficientnet_lite0")}])[0], abs=1e-4
        )
    rules_entry = clipped.configs[0]
    assert rules_entry["config"]["lr"] == 0.002
    assert "clipped to the space" in rules_entry["reasons"]["lr"] and "0.001 -> 0.002" in rules_entry["reasons"]["lr"]
    assert "fixed by the space" in rules_entry["reasons"]["epochs"]


def test_recommend_takes_the_portfolio_config_predicted_best_over_weak_rules_and_says_why(tmp_path):
    rows = synthetic_rows()
    model = fit_recommender(rows, groups=[r["task"] for r in rows])
    assert len(model.portfolio) == 3 * 4 and all(
        abs(math.log10(p["config"]["lr"] / 0.03)) < 0.6 for p in model.portfolio
    )
    task = synthetic_task(rows)
    # rules whose lr is far from the synthetic optimum (0.03)
    document = {"defaults": {"config": {**DEFAULTS, "lr": 0.001}}, "rules": [rule("epochs", {"epochs": 2})]}
    result = recommend(
        task,
        parse_rules(document),
        model,
        data_settings={"image_size": 32, "per_class": None, "classes": None, "seed": 0},
    )
    rules_only, learned = result.configs
    assert learned["source"] == "learned recommender" and rules_only["source"] == "rules"
    assert learned["predicted_val_accuracy"] > rules_only["predicted_val_accuracy"] + 0.05
    assert rules_only["config"]["lr"] == 0.001 and abs(math.log10(learned["config"]["lr"] / 0.03)) < 0.6
    assert set(learned["reasons"]) >= set(learned["config"])  # a reason for every setting
    changed = [k for k in learned["config"] if learned["config"][k] != rules_only["config"].get(k)]
    assert "lr" in changed and all(learned["reasons"][k].startswith("learned recommender") for k in changed)
    out = tmp_path / "recommended.yaml"
    out.write_text(result.to_yaml())
    configs = load_recommended_configs(out)
    assert configs[1]["lr"] == learned["config"]["lr"] and configs[0]["lr"] == 0.001 and len(configs) == 2
    # a portfolio without a better config leaves the rules' config alone, and says so: the same twelve
    # configs, with an lr further still from the optimum than the rules' 0.001
    model.portfolio = [{**p, "config": {**p["config"], "lr": 1e-4}} for p in model.portfolio]
    assert len(model.portfolio) == 12
    alone = recommend(task, parse_rules(document), model)
    assert [c["source"] for c in alone.configs] == ["rules"] and "portfolio" in alone.notes[0]
    assert alone.configs[0]["config"] == rules_only["config"]


def test_load_recommended_configs_reads_a_plain_config_and_names_bad_keys(tmp_path):
    (tmp_path / "best.yaml").write_text("backbone: efficientnet_lite0\nlr: 0.02\n")
    assert load_recommended_configs(tmp_path / "best.yaml")[0]["lr"] == 0.02
    (tmp_path / "bad.yaml").write_text("backbone: efficientnet_lite0\nlearning_rate: 0.02\n")
    with pytest.raises(Exception, match="unknown key 'learning_rate'"):
        load_recommended_configs(tmp_path / "bad.yaml")
    with pytest.raises(HeuristicsError, match="cannot read"):
        load_recommended_configs(tmp_path / "missing.yaml")


def test_shipped_rules_keep_strong_probe_features_and_warm_up_the_head():
    """What the shipped rules claim (heuristics/README.md), as relations rather than their numbers: where the
    last block's linear probe is strong on colour data they freeze more blocks than with a weak probe or on
    grayscale data (whose input shift the stem must adapt to), and every config warms the head up (LP-FT)."""
    rules = load_rules()
    signals = {
        "images_per_class": 100,
        "n_classes": 4,
        "n_images": 400,
        "grayscale": 0,
        "original_side": 200,
        "image_size": 64,
        "num_blocks": 9,
        "fit_peak_block": 8,
        "fit_peak_fraction": 1.0,
        "logme_best": 1.0,
        "logme_last": 1.0,
        "probe_best": 0.96,
        "probe_last": 0.95,
        "knn_best": 0.9,
        "leep": -1.0,
        "nce": -1.0,
        "source_gap": 0.04,
    }
    strong, reasons = rules.apply(signals, "efficientnet_lite0")
    weak, _ = rules.apply({**signals, "probe_last": 0.7, "probe_best": 0.7, "source_gap": 0.3}, "efficientnet_lite0")
    gray, _ = rules.apply({**signals, "grayscale": 1}, "efficientnet_lite0")
    assert reasons["freeze_blocks"].startswith("strong-probe-keep-features")
    assert strong["freeze_blocks"] > weak["freeze_blocks"] and strong["freeze_blocks"] > gray["freeze_blocks"]
    assert strong["freeze_blocks"] < strong["transfer_blocks"]  # the top blocks still train
    assert min(c["head_warmup_epochs"] for c in (strong, weak, gray)) >= 1


def test_the_shipped_meta_dataset_builds_a_portfolio_of_valid_configs():
    # the CSV mixes rows with and without newer knobs (head_warmup_epochs): a column with gaps reads back as
    # floats, and every portfolio config must still be a valid trial config with integer epochs and blocks
    from nbtl.heuristics.learned import build_portfolio
    from nbtl.heuristics.meta import read_meta_csv
    from nbtl.resources import shipped

    rows = read_meta_csv(shipped("heuristics/meta_dataset.csv"))
    assert any(pd.isna(r.get("head_warmup_epochs")) for r in rows) and any(
        r.get("head_warmup_epochs") == 0 for r in rows
    )
    portfolio = build_portfolio(rows, [r["task"] for r in rows])
    assert len(portfolio) >= len({r["task"] for r in rows})
    for entry in portfolio:
        config = TrialConfig.from_dict(entry["config"])
        assert all(isinstance(getattr(config, k), int) for k in ("epochs", "batch_size", "freeze_blocks"))
        assert config.head_warmup_epochs is None or isinstance(config.head_warmup_epochs, int)
