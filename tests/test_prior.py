"""The learned search prior (nbtl.search.prior), through real Optuna studies as Ray's OptunaSearch drives them:
``study.ask()`` + ``space.sample(trial)`` + ``study.tell(trial, value)``. No Ray, no training."""

from __future__ import annotations

import copy
import csv
import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest

from nbtl.config import TrialConfig
from nbtl.heuristics.learned import LearnedRecommender, default_recommender_path
from nbtl.search.prior import PRIOR_CANDIDATES_ATTR, PRIOR_SCORE_ATTR, PriorSampler, build_prior, recommender_score
from nbtl.search.space import load_space, parse_space

ROOT = Path(__file__).resolve().parents[1]
DATASET_SIGNALS = ("images_per_class", "n_classes", "n_images", "grayscale", "original_side", "image_size")
BACKBONE_SIGNALS = (
    "num_blocks",
    "fit_peak_block",
    "fit_peak_fraction",
    "logme_best",
    "logme_last",
    "probe_best",
    "probe_last",
    "knn_best",
    "leep",
    "nce",
    "source_gap",
)
N_CLASSES = 10

optuna.logging.set_verbosity(optuna.logging.WARNING)


def task_rows(task_prefix: str) -> dict[str, dict[str, float]]:
    """What ``TaskFit.row(backbone)`` gives, for every backbone, from the meta-dataset's rows of one task."""
    rows = {}
    with open(ROOT / "heuristics" / "meta_dataset.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["task"].startswith(task_prefix):
                rows[row["backbone"]] = {k: float(row[k]) for k in DATASET_SIGNALS + BACKBONE_SIGNALS}
    assert rows, task_prefix
    return rows


#: The wide non-binary space (search_spaces/default.yaml before its ranges were narrowed): any number of
#: blocks re-initialised, lr down to 1e-3, head lr up to 0.3, L2-SP up to 1. Owned by this test, so the
#: shipped spaces can change without moving these numbers.
WIDE_SPACE = {
    "name": "wide",
    "data": {"image_size": 32},
    "search": {"trials": 12, "seed": 0, "sampler": {"type": "tpe", "n_startup_trials": 4}},
    "parameters": {
        "backbone": {"choices": ["efficientnet_lite0", "efficientnet_lite1"]},
        "transfer_blocks": {"low": 0, "high": "all"},
        "freeze_blocks": {"low": 0, "high": "transfer_blocks"},
        "lr": {"low": 1.0e-3, "high": 0.1, "log": True},
        "lr_decay": {"low": 0.3, "high": 1.0},
        "head_lr": {"low": 1.0e-3, "high": 0.3, "log": True},
        "l2sp_alpha": {"choices": [0.0, 0.001, 0.01, 0.1, 1.0]},
        "l2_beta": {"choices": [0.0, 1.0e-5, 1.0e-4, 1.0e-3]},
        "l2_head": {"choices": [0.0, 1.0e-4, 1.0e-3]},
        "head": {"choices": ["linear", "mlp", "spinal"]},
        "head_width": {"choices": [64, 128, 256], "when": {"head": ["mlp", "spinal"]}},
        "head_dropout": {"choices": [0.0, 0.2]},
        "optimizer": "sgd",
        "momentum": 0.9,
        "epochs": 6,
        "batch_size": 64,
    },
}
CONVENTIONAL = {
    "backbone": "efficientnet_lite0",
    "transfer_blocks": 9,
    "freeze_blocks": 0,
    "lr": 0.03,
    "lr_decay": 1.0,
    "head_lr": 0.03,
    "l2sp_alpha": 0.0,
    "l2_beta": 1.0e-4,
    "l2_head": 1.0e-4,
    "head": "linear",
    "head_dropout": 0.0,
}


@pytest.fixture(scope="module")
def space():
    return parse_space(copy.deepcopy(WIDE_SPACE), where="test space")


@pytest.fixture(scope="module")
def model():
    path = default_recommender_path()
    assert path is not None, "heuristics/recommender.json is shipped"
    return LearnedRecommender.load(path)


@pytest.fixture(scope="module")
def digits():
    return task_rows("digits per_class=100 ")


def fixed_values(space):
    return {p.name: p.value for p in space.parameters if p.fixed and not p.when}


def run(space, sampler, n, value=lambda config: 0.5, enqueue=()):
    """Drive a study as OptunaSearch does; return (configs, trials) of the n asked trials."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for point in enqueue:
        study.enqueue_trial(point)
    configs, trials = [], []
    for _ in range(n):
        trial = study.ask()
        fixed = space.sample(trial)
        config = {**fixed, **trial.params}
        study.tell(trial, float(value(config)))
        configs.append(config)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == n, "proxy trials must not create trials in the study"
    return configs, trials


def tpe(seed=0):
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


def prior(space, model, rows, seed=0, base=None, **kwargs):
    sampler = build_prior(space, base or tpe(seed), rows, N_CLASSES, model=model, seed=seed, **kwargs)
    assert isinstance(sampler, PriorSampler)
    return sampler


def searched(config, space):
    return {k: v for k, v in config.items() if k not in fixed_values(space)}


def test_prior_proposals_differ_from_the_plain_sampler(space, model, digits):
    score = recommender_score(model, digits, fixed_values(space))
    plain, _ = run(space, tpe(0), 8, value=lambda c: score([c])[0])
    steered, trials = run(space, prior(space, model, digits, 0), 8, value=lambda c: score([c])[0])
    assert sum(a != b for a, b in zip(plain, steered)) >= 7
    # the recorded score is the model's prediction of what was proposed
    for config, trial in zip(steered, trials):
        assert trial.user_attrs[PRIOR_SCORE_ATTR] == pytest.approx(score([config])[0])
        assert trial.user_attrs[PRIOR_CANDIDATES_ATTR] >= 1


def test_prior_raises_the_predicted_accuracy_of_the_first_trials(space, model, digits):
    score = recommender_score(model, digits, fixed_values(space))
    plain = np.concatenate([score(run(space, tpe(s), 12, value=lambda c: score([c])[0])[0]) for s in range(3)])
    steered = np.concatenate(
        [score(run(space, prior(space, model, digits, s), 12, value=lambda c: score([c])[0])[0]) for s in range(3)]
    )
    assert steered.mean() > plain.mean() + 0.02
    assert steered.min() >= 1 / N_CLASSES + 0.05


def test_real_recommender_vetoes_configs_it_predicts_near_chance(space, model):
    # On digits with 20 training images per class the shipped model predicts few configs of the space at
    # chance level (about 1%), but some 6% below 0.35 on 10 classes (chance_margin=0.25): 120 random
    # draws include some, the prior (random base, faded out after 10 trials: only the veto left) none.
    rows = task_rows("digits per_class=30 ")
    score = recommender_score(model, rows, fixed_values(space))
    near_chance = 1 / N_CLASSES + 0.25
    plain = score(run(space, optuna.samplers.RandomSampler(seed=0), 120)[0])
    sampler = prior(
        space, model, rows, 0, base=optuna.samplers.RandomSampler(seed=0), fade_trials=10, chance_margin=0.25
    )
    configs, trials = run(space, sampler, 120)
    steered = score(configs)
    assert (plain < near_chance).sum() >= 3
    assert (steered < near_chance).sum() == 0
    assert trials[0].user_attrs[PRIOR_CANDIDATES_ATTR] == 32
    assert max(t.user_attrs[PRIOR_CANDIDATES_ATTR] for t in trials[20:]) > 1  # the veto drew again


@pytest.mark.parametrize("base", ["tpe", "random"])
def test_crafted_dead_region_is_avoided(space, base):
    # transfer_blocks <= 3 on a few hundred images: most of the network re-initialised, predicted at chance
    def crafted(configs):
        return np.array([0.1 if c["transfer_blocks"] <= 3 else 0.6 + 0.01 * c["transfer_blocks"] for c in configs])

    def make():
        return tpe(0) if base == "tpe" else optuna.samplers.RandomSampler(seed=0)

    def value(config):
        return crafted([config])[0]

    plain, _ = run(space, make(), 12, value=value)
    steered, trials = run(space, PriorSampler(make(), space, crafted, n_classes=N_CLASSES, seed=0), 12, value=value)
    assert sum(c["transfer_blocks"] <= 3 for c in plain) >= 2
    assert all(c["transfer_blocks"] > 3 for c in steered)
    assert all(t.user_attrs[PRIOR_SCORE_ATTR] > 0.6 for t in trials)


def test_enqueued_trials_pass_through_untouched(space, model, digits):
    start = dict(CONVENTIONAL)
    other = {
        **start,
        "backbone": "efficientnet_lite1",
        "transfer_blocks": 1,
        "freeze_blocks": 1,
        "lr": 0.1,
        "head": "mlp",
        "head_width": 64,
    }
    partial = {"transfer_blocks": 0, "head": "spinal"}
    configs, trials = run(space, prior(space, model, digits), 5, enqueue=[start, other, partial])
    for point, config, trial in zip((start, other), configs, trials):
        assert searched(config, space) == point
        assert PRIOR_SCORE_ATTR not in trial.user_attrs
    assert {k: configs[2][k] for k in partial} == partial and PRIOR_SCORE_ATTR not in trials[2].user_attrs
    assert all(PRIOR_SCORE_ATTR in t.user_attrs for t in trials[3:])


def check_valid(space, configs, trials):
    from nbtl.backbones import get_spec

    searched_names = {p.name for p in space.parameters if not p.fixed}
    for config, trial in zip(configs, trials):
        full = TrialConfig.from_dict(config, where="a prior proposal").to_dict()
        blocks = get_spec(full["backbone"]).num_blocks
        transfer = blocks if full["transfer_blocks"] is None else full["transfer_blocks"]
        assert 0 <= full["freeze_blocks"] <= transfer <= blocks
        if "head_width" in searched_names:
            assert ("head_width" in config) == (full["head"] in ("mlp", "spinal"))
        if "l2sp_blocks" in searched_names:
            assert ("l2sp_blocks" in config) == (full["l2sp_alpha"] != 0)
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            assert distribution._contains(distribution.to_internal_repr(value))


@pytest.mark.parametrize("multivariate", [False, True])
def test_every_proposal_is_a_valid_point_of_the_space(space, model, digits, multivariate):
    base = optuna.samplers.TPESampler(seed=1, n_startup_trials=3, multivariate=multivariate)
    score = recommender_score(model, digits, fixed_values(space))
    configs, trials = run(space, prior(space, model, digits, 1, base=base), 16, value=lambda c: score([c])[0])
    check_valid(space, configs, trials)


@pytest.mark.parametrize("name", ["default", "binary", "tiny"])
def test_shipped_spaces_take_the_prior(model, digits, name):
    shipped = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    shipped = shipped.resolved(700) if hasattr(shipped, "resolved") else shipped  # batch_size: auto
    score = recommender_score(model, digits, fixed_values(shipped))
    sampler = build_prior(shipped, tpe(0), digits, N_CLASSES, model=model)
    assert sampler is not None
    configs, trials = run(shipped, sampler, 8, value=lambda c: score([c])[0])
    check_valid(shipped, configs, trials)
    assert all(PRIOR_SCORE_ATTR in t.user_attrs for t in trials)


def test_same_seed_same_proposals_other_seed_other_ones(space, model, digits):
    first = run(space, prior(space, model, digits, 3), 10, value=lambda c: c["lr"])[0]
    again = run(space, prior(space, model, digits, 3), 10, value=lambda c: c["lr"])[0]
    other = run(space, prior(space, model, digits, 4), 10, value=lambda c: c["lr"])[0]
    assert first == again
    assert sum(a != b for a, b in zip(first, other)) >= 8


def test_the_prior_fades_and_survives_pickling(space, model, digits):
    sampler = prior(space, model, digits, 0, fade_trials=6)
    _, trials = run(space, sampler, 10, value=lambda c: c["lr"])
    counts = [t.user_attrs[PRIOR_CANDIDATES_ATTR] for t in trials]
    assert counts[0] == 32 and counts[-1] == 1 and counts == sorted(counts, reverse=True)
    clone = pickle.loads(pickle.dumps(sampler))  # Ray's OptunaSearch pickles the study with its sampler
    assert clone.n_candidates == 32 and clone.score([{"backbone": "efficientnet_lite0", "lr": 0.01}]).shape == (1,)


def test_build_prior_needs_a_model_and_task_signals(space, model, digits, tmp_path):
    assert build_prior(space, tpe(), {}, N_CLASSES, model=model) is None
    assert build_prior(space, tpe(), digits, N_CLASSES, model=tmp_path / "absent.json") is None
    assert build_prior(space, tpe(), {"resnet_unknown": digits["efficientnet_lite0"]}, N_CLASSES, model=model) is None
    sampler = build_prior(space, tpe(), digits, N_CLASSES)  # the shipped recommender
    assert sampler is not None and sampler.fade_trials == space.search["trials"]
    # a backbone without signals is not rated (NaN), never dropped as chance
    score = recommender_score(model, {"efficientnet_lite0": digits["efficientnet_lite0"]}, fixed_values(space))
    values = score([{"backbone": "efficientnet_lite0", "lr": 0.01}, {"backbone": "efficientnet_lite1", "lr": 0.01}])
    assert np.isfinite(values[0]) and np.isnan(values[1])


def test_a_broken_score_falls_back_to_the_plain_sampler(space):
    def broken(configs):
        raise KeyError("probe_best")

    configs, trials = run(space, PriorSampler(tpe(0), space, broken, n_classes=N_CLASSES), 6)
    TrialConfig.from_dict(configs[-1], where="a fallback proposal")
    assert all(PRIOR_SCORE_ATTR not in t.user_attrs for t in trials)


def test_cost_aware_ranking_puts_the_cheaper_candidate_first_when_predicted_gains_tie(space):
    from nbtl.search.cost import CostModel, measure_speed

    cost = CostModel({"efficientnet_lite0": measure_speed("efficientnet_lite0", 32)}, 300, 100)
    full = {"backbone": "efficientnet_lite0", "freeze_blocks": 0, "epochs": 6, "batch_size": "auto"}
    frozen = {**full, "freeze_blocks": 6, "head": "mlp"}
    seconds = cost([full, frozen])
    assert seconds[1] < seconds[0]  # the frozen prefix is cached: fewer blocks train

    sampler = PriorSampler(tpe(0), space, lambda c: np.full(len(c), 0.7), n_classes=N_CLASSES, cost=cost)
    gain = sampler.gain_per_second(np.array([0.7, 0.7]), seconds, best=0.6)
    assert gain[1] > gain[0] > 0
    # predicted accuracy ties: the cheaper first; a much better prediction is worth its cost
    assert sampler.choose(np.array([0.7, 0.7]), top=1, ranking=gain) == 1
    better = sampler.gain_per_second(np.array([0.95, 0.7]), seconds, best=0.6)
    assert sampler.choose(np.array([0.95, 0.7]), top=1, ranking=better) == 0
    # a chance-level candidate stays vetoed by its accuracy, however cheap
    assert sampler.choose(np.array([0.7, 0.05]), top=1, ranking=np.array([0.1, 99.0])) == 0


def flat(configs):
    """Every candidate predicted alike (module level: a study holding it is pickled)."""
    return np.full(len(configs), 0.7)


def test_a_cost_aware_prior_steers_a_real_study_towards_cheap_configs(space):
    from nbtl.search.cost import CostModel, measure_speed

    cost = CostModel({b: measure_speed(b, 32) for b in ("efficientnet_lite0", "efficientnet_lite1")}, 300, 100)
    plain, _ = run(space, PriorSampler(tpe(0), space, flat, n_classes=N_CLASSES, seed=0), 8)
    cheap, _ = run(space, PriorSampler(tpe(0), space, flat, n_classes=N_CLASSES, seed=0, cost=cost), 8)
    assert sum(cost(cheap)) < sum(cost(plain))
    clone = pickle.loads(pickle.dumps(PriorSampler(tpe(0), space, flat, cost=cost)))  # Ray pickles the study
    assert clone.cost([plain[0]]).shape == (1,)
