"""How a search starts and is set up: start points, per-trial seeds, batch sizes that follow the data,
'all-N' block bounds, time budgets, the ranking that names the best trial. Real Optuna studies, real
fit measures on real images; no Ray (the end-to-end search is in test_search_budget.py)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from nbtl.backbones import get_spec
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.errors import ConfigError
from nbtl.heuristics.recipes import conventional_config, probe_config
from nbtl.ranking import rank_trials
from nbtl.search.space import auto_batch_size, load_space, parse_space, trial_seed
from nbtl.search.start import start_points
from nbtl.search.units import parse_duration

pytestmark = pytest.mark.usefixtures("quiet_optuna")

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "search_spaces" / "default.yaml"


def _trial_list(space, search_seed: int, trials: int = 6, sampler_seed: int | None = None) -> list[dict]:
    """The configs a search would run, in order: Optuna's define-by-run, as Ray's OptunaSearch drives it."""
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(
            seed=search_seed if sampler_seed is None else sampler_seed, n_startup_trials=3
        )
    )
    define = space.define_by_run(search_seed)
    configs = []
    for i in range(trials):
        trial = study.ask()
        fixed = define(trial)
        configs.append({**trial.params, **fixed})
        study.tell(trial, 0.1 * (i % 4))
    return configs


# --- seeds -------------------------------------------------------------------------------------------


def test_each_trial_gets_a_seed_derived_from_the_search_seed():
    space = load_space(DEFAULT).resolved(300)
    first, again, other = _trial_list(space, 0), _trial_list(space, 0), _trial_list(space, 1)
    assert first == again  # same search seed: the same trial list, seeds included
    seeds = [c["seed"] for c in first]
    assert seeds == [trial_seed(0, i) for i in range(len(first))] and len(set(seeds)) == len(seeds)
    assert [c["seed"] for c in other] != seeds and other != first  # another search seed: other trials
    for config in first:
        TrialConfig.from_dict(config)


def test_a_space_that_fixes_the_seed_keeps_it():
    document = {"parameters": {"lr": {"low": 0.001, "high": 0.1, "log": True}, "seed": 7}}
    configs = _trial_list(parse_space(document), 3, trials=3)
    assert {c["seed"] for c in configs} == {7}


# --- data-dependent settings, bounds, budgets ----------------------------------------------------------


@pytest.mark.parametrize("n_train, expected", [(60, 8), (336, 16), (700, 32), (1259, 32), (10_000, 64)])
def test_auto_batch_size_gives_enough_steps(n_train, expected):
    assert auto_batch_size(n_train) == expected
    assert expected == 8 or n_train / expected >= 20  # at least 20 optimizer steps an epoch above the floor


def test_batch_size_auto_resolves_with_the_training_split():
    space = load_space(DEFAULT)
    assert next(p for p in space.parameters if p.name == "batch_size").value == "auto"
    assert {c["batch_size"] for c in _trial_list(space.resolved(336), 0, trials=3)} == {16}


def test_all_minus_n_bounds_follow_each_backbone():
    space = load_space(DEFAULT).resolved(300)
    configs = _trial_list(space, 0, trials=25, sampler_seed=3)
    for config in configs:
        blocks = get_spec(config["backbone"]).num_blocks
        assert blocks - 3 <= config["transfer_blocks"] <= blocks
        assert config["freeze_blocks"] <= config["transfer_blocks"]
        if "l2sp_blocks" in config:
            assert config["l2sp_alpha"] > 0 and config["l2sp_blocks"] <= config["transfer_blocks"]
    assert len({c["transfer_blocks"] for c in configs}) > 1


def test_bad_block_bound_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"parameters.transfer_blocks: low='all-x' must be 'all', 'all-N'"):
        parse_space({"parameters": {"transfer_blocks": {"low": "all-x", "high": "all"}}})


@pytest.mark.parametrize("text, seconds", [("900", 900), (90, 90), ("90s", 90), ("15m", 900), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "soon", "15x", "inf"])
def test_bad_duration_is_refused(text):
    with pytest.raises(ConfigError, match="positive duration such as 900, 90s, 15m"):
        parse_duration(text)


def test_space_validates_start_points_and_budget():
    with pytest.raises(ConfigError, match="search.start_points must be a list of probe, conventional, recommend"):
        parse_space({"search": {"start_points": ["probe", "oracle"]}, "parameters": {"lr": 0.01}})
    with pytest.raises(ConfigError, match="search.time_budget: a time budget must be a positive duration"):
        parse_space({"search": {"time_budget": "later"}, "parameters": {"lr": 0.01}})
    with pytest.raises(ConfigError, match="search.prior: unknown key 'strength'"):
        parse_space({"search": {"prior": {"strength": 2}}, "parameters": {"lr": 0.01}})


# --- the best trial ------------------------------------------------------------------------------------


def test_ties_on_validation_accuracy_go_to_the_lower_validation_loss():
    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED"],
            "best_val_accuracy": [0.967, 0.967, 0.99, 0.9],
            "best_val_loss": [0.40, 0.12, 0.01, 0.05],
        }
    )
    assert list(rank_trials(table)["trial_id"]) == ["b", "a", "d", "c"]


# --- start points --------------------------------------------------------------------------------------


def test_probe_and_conventional_start_points_are_points_of_the_space():
    space = load_space(DEFAULT).resolved(300)
    said: list[str] = []
    found = start_points(
        space,
        ["probe", "conventional"],
        data="digits",
        train=None,
        seed=0,
        image_size=32,
        per_class=None,
        classes=None,
        say=said.append,
    )
    assert found.labels == ["probe", "conventional"] and found.task is None
    probe, conventional = found.points
    blocks = get_spec(probe["backbone"]).num_blocks
    assert probe["transfer_blocks"] == probe["freeze_blocks"] == blocks and probe["head"] == "linear"
    assert conventional["freeze_blocks"] == 0 and conventional["transfer_blocks"] == blocks
    assert conventional["l2sp_alpha"] == 0 and conventional["lr_decay"] == 1.0
    assert said == []  # both fit default.yaml as they are
    for point in found.points:  # each is a complete point: the sampler has nothing left to choose
        assert space.project(point) == (point, [])


def test_start_points_say_what_moved_to_fit_a_narrow_space():
    space = parse_space(
        {
            "parameters": {
                "backbone": "efficientnet_lite0",
                "freeze_blocks": {"choices": [5, 7]},
                "lr": {"low": 0.001, "high": 0.01, "log": True},
            }
        }
    )
    said: list[str] = []
    found = start_points(
        space,
        ["probe", "conventional"],
        data="digits",
        train=None,
        seed=0,
        image_size=32,
        per_class=None,
        classes=None,
        say=said.append,
    )
    assert found.points == [{"freeze_blocks": 7, "lr": 0.01}, {"freeze_blocks": 5, "lr": 0.01}]
    assert "start point probe: freeze_blocks: 9 -> 7 (nearest choice)" in said
    assert "start point conventional: lr: 0.03 -> 0.01 (range 0.001..0.01)" in said


def test_recommend_start_points_measure_the_search_training_split():
    dataset = load_dataset("digits", image_size=32, per_class=20, seed=0)
    train = split_dataset(dataset, seed=0).train
    space = parse_space(
        {
            "parameters": {
                "backbone": {"choices": ["efficientnet_lite0"]},
                "transfer_blocks": {"low": 0, "high": "all"},
                "freeze_blocks": {"low": 0, "high": "transfer_blocks"},
                "lr": {"low": 0.001, "high": 0.1, "log": True},
                "head_lr": {"low": 0.001, "high": 0.3, "log": True},
                "lr_decay": {"low": 0.3, "high": 1.0},
                "l2sp_alpha": {"choices": [0.0, 0.01, 0.1]},
                "l2_beta": {"choices": [0.0, 1.0e-4]},
                "l2_head": {"choices": [0.0, 1.0e-4]},
                "epochs": 2,
                "batch_size": 16,
            }
        }
    )
    found = start_points(
        space,
        ["probe", "conventional", "recommend"],
        data="digits",
        train=train,
        seed=0,
        image_size=32,
        per_class=20,
        classes=None,
        say=lambda line: None,
    )
    assert found.labels[:2] == ["probe", "conventional"] and found.labels[2] == "recommend-1"
    assert found.task is not None and found.task.dataset["n_images"] == len(train)  # the split, not the dataset
    assert math.isfinite(found.task.backbones["efficientnet_lite0"]["logme_best"])
    assert len(found.points) == len({tuple(sorted(p.items())) for p in found.points})  # no duplicates
    for point in found.points:
        TrialConfig.from_dict({**point, "epochs": 2, "batch_size": 16})


def test_probe_and_conventional_configs_build():
    for backbone in ("efficientnet_lite0", "efficientnet_lite1"):
        for config in (probe_config(backbone), conventional_config(backbone)):
            TrialConfig.from_dict(config)


def test_rerank_orders_the_top_trials_by_the_mean_of_both_runs():
    from nbtl.search.reevaluate import rerank

    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["FINISHED"] * 3 + ["STOPPED"],
            "best_val_accuracy": [0.97, 0.96, 0.95, 0.5],
            "best_val_loss": [0.1, 0.2, 0.1, 1.0],
        }
    )
    # a's repeat falls to 0.85, b's holds at 0.96; c has no repeat (cut off by the budget): its own run counts
    repeats = {
        "a": {"best_val_accuracy": 0.85, "best_val_loss": 0.5},
        "b": {"best_val_accuracy": 0.96, "best_val_loss": 0.2},
    }
    ranked = rerank(table, repeats, ["a", "b", "c"])
    assert list(ranked["trial_id"]) == ["b", "c", "a", "d"]
    assert ranked.loc[0, "mean_val_accuracy"] == pytest.approx(0.96)
    assert ranked.set_index("trial_id").loc["a", "mean_val_accuracy"] == pytest.approx(0.91)
    assert math.isnan(ranked.set_index("trial_id").loc["c", "repeat_val_accuracy"])
    assert math.isnan(ranked.set_index("trial_id").loc["d", "mean_val_accuracy"])


def test_reevaluate_must_be_a_count():
    with pytest.raises(ConfigError, match=r"search.reevaluate.top must be an integer >= 0, got 'many'"):
        parse_space({"search": {"reevaluate": {"top": "many"}}, "parameters": {"lr": 0.01}})
    with pytest.raises(ConfigError, match=r"search.reevaluate.resplit must be true .* or false .*, got 'yes'"):
        parse_space({"search": {"reevaluate": {"top": 3, "resplit": "yes"}}, "parameters": {"lr": 0.01}})
    settings = parse_space({"search": {"reevaluate": {"top": 3, "resplit": True}}, "parameters": {"lr": 0.01}}).settings
    assert settings.reevaluate_top == 3 and settings.reevaluate_resplit


def test_a_resplit_repeat_trains_and_validates_on_another_partition(weights):
    """The repeat of nbtl.search.reevaluate, run here without Ray: with a resplit seed it scores the config on other
    validation images (the same number), with real weights and gradients; without one, on the search's own."""
    from nbtl.search.reevaluate import _repeat_trial

    splits = split_dataset(load_dataset("digits", image_size=32, per_class=12, classes="0,1,2"), seed=0)
    config = {**probe_config("efficientnet_lite0"), "epochs": 1, "batch_size": 16}
    weights = {"efficientnet_lite0": weights}
    same = _repeat_trial(config, splits, weights, None, None, 0, 1)
    other = _repeat_trial(config, splits, weights, None, None, 0, 1, resplit_seed=5)
    again = _repeat_trial(config, splits, weights, None, None, 0, 1, resplit_seed=5)
    n_val = len(splits.val)
    for final in (same, other):
        assert 0.0 <= final["best_val_accuracy"] <= 1.0 and math.isfinite(final["best_val_loss"])
        assert abs(final["best_val_accuracy"] * n_val - round(final["best_val_accuracy"] * n_val)) < 1e-6
    assert other["best_val_loss"] == pytest.approx(again["best_val_loss"])  # same seeds, same partition
    assert other["best_val_loss"] != pytest.approx(same["best_val_loss"])  # other validation images
    assert other["test_accuracy"] == other["test_accuracy"]  # the test images are still there


def test_a_registered_recipe_is_a_start_point_a_space_may_list():
    """A start point is a recipe registered by name (nbtl.search.settings.register_start_point): a space lists it,
    the check accepts it, and the search enqueues it as a point of the space, on the backbone ranked first."""
    from nbtl.search.settings import register_start_point, remove_start_point, start_point_names

    def top_two(backbone: str) -> dict:
        blocks = get_spec(backbone).num_blocks
        return {**probe_config(backbone), "freeze_blocks": blocks - 2, "lr": 0.003}

    register_start_point("top-two", top_two, "the probe with its top two blocks fine-tuned")
    try:
        assert "top-two" in start_point_names()
        document = yaml.safe_load(DEFAULT.read_text())
        document["search"]["start_points"] = ["top-two", "probe"]
        space = parse_space(document, where="space.yaml").resolved(300)
        assert space.start_points == ["top-two", "probe"]
        found = start_points(
            space, space.start_points, data="digits", train=None, seed=0, image_size=32, per_class=None,
            classes=None, say=lambda line: None,
        )  # fmt: skip
        assert found.labels == ["top-two", "probe"]
        blocks = get_spec(found.points[0]["backbone"]).num_blocks
        assert found.points[0]["freeze_blocks"] == blocks - 2 and found.points[0]["lr"] == 0.003
        with pytest.raises(ConfigError, match="already registered"):
            register_start_point("top-two", top_two)
    finally:
        remove_start_point("top-two")
    with pytest.raises(ConfigError, match="search.start_points must be a list of probe, conventional, recommend"):
        parse_space(document, where="space.yaml")
    with pytest.raises(ConfigError, match="nbtl's own"):
        remove_start_point("probe")


def _one_backbone_space():
    return parse_space(
        {
            "parameters": {
                "backbone": {"choices": ["efficientnet_lite0"]},
                "transfer_blocks": {"low": 0, "high": "all"},
                "freeze_blocks": {"low": 0, "high": "transfer_blocks"},
                "lr": {"low": 0.001, "high": 0.1, "log": True},
                "epochs": 2,
                "batch_size": 16,
            }
        }
    )


def test_fit_measures_see_a_stratified_sample_of_a_large_training_split():
    """Issue 18's scale run spent 40 minutes extracting features of 42,000 images before any trial: the fit measures
    now see at most max_images of the training split, drawn per class in proportion (every class present), the
    same images for the same seed; the dataset's size is still the whole split's, which the trials train on."""
    from nbtl.heuristics.recommend import FIT_MAX_IMAGES, fit_sample, measure_task

    train = split_dataset(load_dataset("digits", image_size=32, per_class=40, seed=0), seed=0).train
    sample = fit_sample(train, 50, seed=0)
    assert len(sample) == 50 and set(sample.labels.tolist()) == set(train.labels.tolist())
    counts, whole = sample.class_counts(), train.class_counts()
    for name in train.classes:  # in proportion: within one image of the split's share
        assert abs(counts[name] - whole[name] * 50 / len(train)) <= 1
    assert fit_sample(train, 50, seed=0).fingerprint() == sample.fingerprint()
    # the images it drew at ed3e581, before its draw moved to nbtl.data.splits.stratified_sample (inert_changes.yaml)
    assert sample.fingerprint() == "cc4095085f048ed212c1f5af737c834eece4825fd5eca0a4d01faf89bbb7b6d5"
    assert fit_sample(train, 50, seed=1).fingerprint() != sample.fingerprint()
    assert fit_sample(train, len(train), seed=0) is train  # nothing to leave out: the split itself
    said = []
    task = measure_task("digits", ["efficientnet_lite0"], train=train, seed=0, max_images=50, log=said.append)
    assert task.images == 50 and task.dataset["n_images"] == len(train)
    assert f"fit measured on 50 of the {len(train)} training images" in said[0]
    assert measure_task("digits", ["efficientnet_lite0"], train=train, seed=0, log=said.append).images == len(train)
    assert len(train) < FIT_MAX_IMAGES


def test_a_budget_bounds_the_fit_measures_or_skips_recommend():
    """Under a time budget the fit measures take at most FIT_SHARE of it, by a cost model on the forward pass timed
    here (nbtl.search.cost.fit_seconds): enough time measures every image, less a sample, too little none (recommend
    is skipped, saying why, and the recipes still start the search)."""
    from nbtl.search.cost import FIT_SHARE, fit_seconds, measure_speed
    from nbtl.search.start import FIT_MIN_PER_CLASS, fit_images

    train = split_dataset(load_dataset("digits", image_size=32, per_class=40, seed=0), seed=0).train
    speeds = [measure_speed("efficientnet_lite0", 32)]
    sizes = {"efficientnet_lite0": 32}
    assert fit_seconds(speeds, 200) > fit_seconds(speeds, 100) > fit_seconds(speeds, 0) > 0
    assert fit_images(sizes, len(train), 10, 1e6) == (len(train), "")
    part, why = fit_images(sizes, len(train), 10, fit_seconds(speeds, 150) / FIT_SHARE)
    assert 149 <= part <= 150 and f"measured on {part} of them" in why  # what FIT_SHARE of the budget affords
    none, why = fit_images(sizes, len(train), 10, fit_seconds(speeds, 20) / FIT_SHARE)
    assert none == 0 and why.startswith("recommend skipped:") and "--time-budget" in why
    assert FIT_MIN_PER_CLASS * 10 > 20

    said = []
    common = dict(data="digits", train=train, seed=0, image_size=32, per_class=40, classes=None, say=said.append)
    found = start_points(_one_backbone_space(), ["probe", "conventional", "recommend"], seconds=0.01, **common)
    assert found.labels == ["probe", "conventional"] and found.task is None
    assert any(line.startswith("recommend skipped:") for line in said)
    budget = fit_seconds(speeds, 150) / FIT_SHARE
    found = start_points(_one_backbone_space(), ["probe", "recommend"], seconds=budget, **common)
    assert found.task is not None and 140 <= found.task.images <= 150 and "recommend-1" in found.labels
