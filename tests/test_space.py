"""Tests of nbtl.search.space: YAML validation and sampling with a real Optuna study."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from nbtl.backbones import get_spec
from nbtl.config import TrialConfig, dump_config
from nbtl.errors import ConfigError
from nbtl.search.space import SearchSpace, auto_batch_size, load_space, parse_space
from nbtl.transfer import block_learning_rates, resolve_blocks

pytestmark = pytest.mark.usefixtures("quiet_optuna")

SPACES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))

BASE = {
    "name": "unit",
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "search": {"trials": 4, "seed": 0, "sampler": {"type": "random"}, "scheduler": {"type": "fifo"}},
    "parameters": {
        "backbone": {"choices": ["efficientnet_lite0", "resnet18"]},
        "transfer_blocks": {"low": 0, "high": "all"},
        "freeze_blocks": {"low": 0, "high": "transfer_blocks"},
        "lr": {"low": 1.0e-3, "high": 0.1, "log": True},
        "head": {"choices": ["linear", "mlp", "spinal"]},
        "head_width": {"choices": [16, 32], "when": {"head": ["mlp", "spinal"]}},
        "epochs": 2,
    },
}


def _document(**parameters) -> dict:
    """BASE with ``parameters`` replaced (a value of None removes the key)."""
    document = copy.deepcopy(BASE)
    for name, spec in parameters.items():
        if spec is None:
            document["parameters"].pop(name, None)
        else:
            document["parameters"][name] = spec
    return document


N_TRAIN = 300  # the training split size 'batch_size: auto' is resolved for


def _sample(space: SearchSpace, trials: int = 20, seed: int = 0, sampler=None) -> list[tuple[dict, dict]]:
    """``(suggested params, fixed values)`` of ``trials`` define-by-run trials on a real study."""
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    define = space.resolved(N_TRAIN).define_by_run()
    samples = []
    for i in range(trials):
        trial = study.ask()
        fixed = define(trial)
        samples.append((dict(trial.params), fixed))
        study.tell(trial, float(i % 3))
    return samples


def _check_sample(space: SearchSpace, params: dict, fixed: dict) -> TrialConfig:
    """Every constraint a sampled trial must meet to build and train."""
    assert not set(params) & set(fixed)
    values = {**params, **fixed}
    config = TrialConfig.from_dict(values)
    config.validate()
    num_blocks = get_spec(config.backbone).num_blocks
    transfer = num_blocks if config.transfer_blocks is None else config.transfer_blocks
    assert 0 <= config.freeze_blocks <= transfer <= num_blocks, values
    if not config.pretrained:
        assert config.freeze_blocks == 0, values
    assert resolve_blocks(config) == (transfer if config.pretrained else 0, config.freeze_blocks)
    assert len(block_learning_rates(config, num_blocks)) == num_blocks

    # A block range is capped to what the trial can take: its backbone's blocks, its transfer_blocks.
    cap = {
        "transfer_blocks": num_blocks,
        "freeze_blocks": transfer if config.pretrained else 0,
        "l2sp_blocks": transfer,
    }
    for p in space.parameters:
        active = all(values.get(k, getattr(TrialConfig(), k)) in v for k, v in p.when.items())
        assert (p.name in values) == active, f"{p.name}: active={active} but sampled={p.name in values}"
        if not active:
            continue
        value = values[p.name]
        if p.fixed:
            assert fixed[p.name] == (auto_batch_size(N_TRAIN) if p.value == "auto" else p.value)
        elif p.choices is not None:
            assert value in p.choices
        else:
            assert p.name in params
            low = p.low if not isinstance(p.low, str) else None
            high = p.high if not isinstance(p.high, str) else None
            if p.name in cap:
                high = cap[p.name] if high is None else min(high, cap[p.name])
                low = None if low is None else min(low, high)
            assert low is None or value >= low, (p.name, value, low)
            assert high is None or value <= high, (p.name, value, high)
    return config


# --- the shipped spaces ---------------------------------------------------------------------


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_parses_and_samples_valid_configs(path):
    space = load_space(path)
    assert space.name == path.stem and space.source == path.read_text() and space.path == str(path)
    assert space.max_epochs >= 1 and space.backbones()
    samples = _sample(space, trials=20, seed=len(path.stem))
    for params, fixed in samples:
        config = _check_sample(space, params, fixed)
        yaml_config = yaml.safe_load(dump_config(config.to_dict()))
        assert TrialConfig.from_dict(yaml_config) == config
    distinct = {tuple(sorted(params.items())) for params, _ in samples}
    assert len(distinct) == len(samples)  # every trial is a new point


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_samples_with_tpe(path):
    space = load_space(path)
    sampler = optuna.samplers.TPESampler(n_startup_trials=3, seed=0)
    for params, fixed in _sample(space, trials=8, sampler=sampler):
        _check_sample(space, params, fixed)


def test_default_space_conditional_head_width():
    space = load_space(Path(__file__).parent.parent / "search_spaces" / "default.yaml")
    samples = _sample(space, trials=30, seed=3)
    heads = {params["head"] for params, _ in samples}
    assert heads == {"linear", "mlp", "spinal"}
    for params, _ in samples:
        assert ("head_width" in params) == (params["head"] in ("mlp", "spinal"))
    transfers = {params["transfer_blocks"] for params, _ in samples}
    assert len(transfers) > 3  # 'all' opens the whole range of the chosen backbone


def test_tiny_space_fixed_values():
    space = load_space(Path(__file__).parent.parent / "search_spaces" / "tiny.yaml")
    for params, fixed in _sample(space, trials=5):
        assert fixed == {"backbone": "efficientnet_lite0", "epochs": 2, "batch_size": 32}
        assert 7 <= params["transfer_blocks"] <= 9 and 5 <= params["freeze_blocks"] <= params["transfer_blocks"]
    assert space.max_epochs == 2 and space.backbones() == ["efficientnet_lite0"]
    assert space.data["image_size"] == 32 and space.search["trials"] == 3


# --- block bounds resolve against the trial's own backbone and transfer_blocks ---------------


def test_block_bounds_follow_the_chosen_backbone():
    document = _document()
    document["parameters"] = {"pretrained": {"choices": [True, False]}, **document["parameters"]}
    space = parse_space(document)
    samples = _sample(space, trials=40, seed=1)
    for params, fixed in samples:
        _check_sample(space, params, fixed)
    seen = {(p["backbone"], p["pretrained"]) for p, _ in samples}
    assert len(seen) == 4
    lite_transfers = [p["transfer_blocks"] for p, _ in samples if p["backbone"] == "efficientnet_lite0"]
    assert max(lite_transfers) > 5  # more than resnet18 has: 'all' is per backbone


def test_literal_block_bounds_are_capped_to_what_the_trial_can_take():
    """A fixed high (freeze up to 4 blocks, keep up to 7) must not give a trial that cannot be
    built: transfer_blocks beyond resnet18's 5 blocks, or freeze_blocks beyond transfer_blocks."""
    space = parse_space(_document(transfer_blocks={"low": 0, "high": 7}, freeze_blocks={"low": 1, "high": 4}))
    samples = _sample(space, trials=40, seed=2)
    for params, fixed in samples:
        _check_sample(space, params, fixed)
    assert {p["transfer_blocks"] for p, _ in samples if p["backbone"] == "efficientnet_lite0"} >= {6, 7}
    assert max(p["freeze_blocks"] for p, _ in samples) == 4


@pytest.mark.parametrize("dependency, spec", [("backbone", {"choices": ["resnet18"]}), ("pretrained", True)])
def test_block_ranges_must_come_after_what_they_depend_on(dependency, spec):
    document = _document(**{dependency: None})
    document["parameters"][dependency] = spec  # now listed after transfer_blocks
    _error(
        document,
        f"parameters.transfer_blocks: its range depends on the trial's {dependency}; "
        f"list '{dependency}' before 'transfer_blocks'",
    )


def test_freeze_range_must_come_after_transfer_blocks():
    document = _document(freeze_blocks=None, transfer_blocks=None)
    document["parameters"] = {"freeze_blocks": {"low": 0, "high": 3}, "transfer_blocks": 4, **document["parameters"]}
    document["parameters"] = {"backbone": document["parameters"].pop("backbone"), **document["parameters"]}
    _error(
        document,
        "parameters.freeze_blocks: its range depends on the trial's transfer_blocks; "
        "list 'transfer_blocks' before 'freeze_blocks'",
    )


# --- validation errors ----------------------------------------------------------------------


def _error(document, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as error:
        parse_space(document, where="space.yaml")
    message = str(error.value)
    assert message.startswith("space.yaml") and "\n" not in message
    return message


def test_base_document_is_valid():
    space = parse_space(_document(), where="space.yaml")
    assert [p.name for p in space.parameters] == list(BASE["parameters"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"paramters": {}}, "unknown key 'paramters'"),
        ({"data": {"image_size": 32, "imgsize": 3}}, "data: unknown key 'imgsize'"),
        ({"data": {"val_fraction": 0.7}}, "data.val_fraction must be between 0 and 0.5"),
        ({"data": {"augmentation": {"vflip": True}}}, "vflip"),
        ({"search": {"trials": 0}}, "search.trials must be an integer >= 1"),
        ({"search": {"sampler": {"type": "grid"}}}, "search.sampler.type must be one of tpe, random"),
        ({"search": {"sampler": {"type": "random", "n_startup_trials": 3}}}, "search.sampler: unknown key 'n_startup_trials'"),
        ({"search": {"scheduler": {"type": "asha", "patience": 2}}}, "search.scheduler: unknown key 'patience'"),
        ({"search": {"resources": {"cpu": 0}}}, "search.resources.cpu must be a number > 0"),
        ({"search": {"reuse_actors": "no"}}, "search.reuse_actors must be true .* or false .*, got 'no'"),
        ({"parameters": {}}, "'parameters' must be a mapping"),
    ],
)  # fmt: skip
def test_bad_sections_name_the_key(change, match):
    _error({**copy.deepcopy(BASE), **change}, match)


@pytest.mark.parametrize(
    "parameters, match",
    [
        ({"lrr": 0.1}, "parameters.lrr: unknown parameter 'lrr'"),
        ({"lr": {"low": 0.1, "high": 0.01}}, r"parameters.lr: low \(0.1\) is greater than high \(0.01\)"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "parameters.lr: log scale needs low > 0"),
        ({"l2_beta": {"low": -1.0, "high": 0.1, "log": True}}, "parameters.l2_beta: log scale needs low > 0"),
        ({"lr": {"low": 0.0, "high": 0.1}}, "parameters.lr: lr must be > 0"),
        ({"lr": {"low": 0.01}}, "parameters.lr: a range needs both 'low' and 'high'"),
        ({"lr": {"low": 0.01, "high": 0.1, "lg": True}}, "parameters.lr: unknown key 'lg'"),
        ({"lr": {"low": 0.01, "high": 0.1, "log": True, "step": 0.01}}, "parameters.lr: 'step' and 'log' cannot be combined"),
        ({"lr": {"low": 0.01, "high": "all"}}, "parameters.lr: high='all': only transfer_blocks / freeze_blocks"),
        ({"lr": -1.0}, "parameters.lr: lr must be > 0"),
        ({"epochs": {"low": 1, "high": 2.5}}, "parameters.epochs: high must be an integer"),
        ({"head": {"low": 1, "high": 2}}, "parameters.head: head is not numeric"),
        ({"head": {"choices": []}}, "parameters.head: 'choices' must be a non-empty list"),
        ({"head": {"choices": "spinal"}}, "parameters.head: 'choices' must be a non-empty list"),
        ({"head": {"choices": ["linear", "conv"]}}, "parameters.head: head must be one of linear, mlp, spinal, got 'conv'"),
        ({"head": {"choices": ["linear"], "low": 1, "high": 2}}, "parameters.head: give either 'choices' or 'low'/'high'"),
        ({"backbone": {"choices": ["resnet-18"]}}, "parameters.backbone: unknown backbone 'resnet-18'"),
        ({"head_width": {"choices": [1, 32]}}, "parameters.head_width: head_width must be an integer >= 2"),
        ({"head_width": {"choices": [16], "when": {"hed": "mlp"}}}, "parameters.head_width: 'when' names 'hed'"),
        ({"head_width": {"choices": [16], "when": {"optimizer": "sgd"}}}, "parameters.head_width: 'when' names 'optimizer'"),
        ({"head_width": {"choices": [16], "when": "mlp"}}, "parameters.head_width: 'when' must map"),
        ({"head_width": {"choices": [16], "when": {"head": "spinl"}}}, "parameters.head_width: 'when' value 'spinl'"),
        ({"freeze_blocks": {"low": 0, "high": "transfer"}}, "parameters.freeze_blocks: high='transfer' must be 'all'"),
        ({"transfer_blocks": None, "freeze_blocks": {"low": 0, "high": "transfer_blocks"}}, "parameters.freeze_blocks: high='transfer_blocks'"),
    ],
)  # fmt: skip
def test_bad_parameters_name_the_key(parameters, match):
    _error(_document(**parameters), match)


def test_when_after_its_parameter_is_rejected():
    document = _document()
    params = document["parameters"]
    document["parameters"] = {"head_width": params.pop("head_width"), **params}
    _error(document, "'when' names 'head', which is not a parameter listed before 'head_width'")


def test_document_must_be_a_mapping():
    _error(["not", "a", "mapping"], "must be a mapping with sections")


def test_load_space_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        load_space(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("parameters: {lr: [0.1\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML") as error:
        load_space(broken)
    assert "\n" not in str(error.value)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(_document(lr={"low": 1.0, "high": 0.5}), sort_keys=False))
    with pytest.raises(ConfigError, match=r"wrong.yaml: parameters.lr: low \(1.0\)"):
        load_space(wrong)


def test_project_moves_a_full_config_to_the_nearest_point_of_the_space_and_optuna_runs_it():
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml")
    config = TrialConfig(
        transfer_blocks=6, freeze_blocks=3, lr=0.5, lr_decay=0.7, l2sp_alpha=0.02, head="mlp", epochs=9
    ).to_dict()
    point, changes = space.project(config)
    # tiny: transfer_blocks 7..9, freeze_blocks 5..transfer, lr 1e-3..0.05, l2sp_alpha {0, 0.01}, head {linear, spinal}
    assert point == {"transfer_blocks": 7, "freeze_blocks": 5, "lr": 0.05, "lr_decay": 0.7, "l2sp_alpha": 0.01}
    assert any(c.startswith("head: 'mlp' is not a choice") for c in changes)
    assert any(c.startswith("epochs: 9 -> 2") for c in changes)
    # the point is a valid enqueued trial: Optuna samples exactly it (and the rest)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(point)
    trial = study.ask()
    fixed = space.sample(trial)
    assert {k: trial.params[k] for k in point} == point and fixed["epochs"] == 2


def test_search_settings_take_each_default_from_one_place():
    """A space that leaves the search section out gets SearchSettings' defaults, and every reader (the option
    precedence, Optuna's sampler, Ray Tune's scheduler, the prior's fading) reads them from there."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from nbtl.search.algorithms import get_scheduler
    from nbtl.search.options import SearchOptions, optuna_sampler, setting, trial_resources, tune_scheduler
    from nbtl.search.settings import SearchSettings

    document = copy.deepcopy(BASE)
    document.pop("search", None)
    space = parse_space(document)
    defaults = SearchSettings()
    assert space.settings == defaults
    options = SearchOptions(data="digits")
    assert setting(options, space, "trials") == defaults.trials == 8
    assert setting(options, space, "max_concurrent") == defaults.max_concurrent
    assert setting(SearchOptions(data="digits", trials=3), space, "trials") == 3  # the command line wins
    assert trial_resources(space, options) == {"cpu": 1, "gpu": 0}
    assert isinstance(optuna_sampler(space, 0), optuna.samplers.TPESampler)
    scheduler = tune_scheduler(space)
    assert isinstance(scheduler, ASHAScheduler)
    rungs = [milestone for milestone, _ in scheduler._brackets[0]._rungs]  # Ray's own: the first rung is the grace
    assert min(rungs) == get_scheduler("asha").defaults["grace_period"] and max(rungs) == space.max_epochs
    assert not space.settings.prior_enabled and space.settings.prior_trials == defaults.trials  # off unless enabled

    document["search"] = {
        "trials": 5,
        "sampler": {"type": "random"},
        "scheduler": {"type": "fifo"},
        "prior": {"trials": 30},
        "reevaluate": {"top": 3},
        "time_budget": "2m",
    }
    settings = parse_space(document).settings
    assert isinstance(optuna_sampler(parse_space(document), 0), optuna.samplers.RandomSampler)
    assert isinstance(tune_scheduler(parse_space(document)), FIFOScheduler)
    assert not settings.prior_enabled and settings.prior_trials == 30
    assert settings.reevaluate_top == 3 and settings.time_budget == 120.0
    assert settings.scheduler.to_dict() == {"type": "fifo"} and settings.sampler.to_dict() == {"type": "random"}
