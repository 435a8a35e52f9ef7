"""The sampler and scheduler registries (nbtl.search.algorithms): every registered one builds from a space with its
defaults, and a new one is a registration in one file: this one adds Optuna's quasi-Monte Carlo sampler and Ray Tune's
median stopping rule, and a space names them, is checked by their rules, and builds them."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule, TrialScheduler

from nbtl.errors import ConfigError
from nbtl.ranking import METRIC, MODE
from nbtl.search.algorithms import (
    get_sampler,
    get_scheduler,
    register_sampler,
    register_scheduler,
    remove_sampler,
    remove_scheduler,
    sampler_names,
    scheduler_names,
)
from nbtl.search.options import optuna_sampler, tune_scheduler
from nbtl.search.space import parse_space


def space_with(**search):
    return parse_space(
        {
            "name": "algorithms",
            "search": {"trials": 4, **search},
            "parameters": {
                "backbone": "efficientnet_lite0",
                "lr": {"low": 0.001, "high": 0.1, "log": True},
                "epochs": 3,
            },
        },
        where="space.yaml",
    )


@pytest.mark.parametrize("name", sampler_names())
def test_every_registered_sampler_builds_from_a_space_and_samples(name):
    sampler = optuna_sampler(space_with(sampler={"type": name}), seed=0)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda trial: trial.suggest_float("lr", 0.001, 0.1, log=True), n_trials=3)
    assert len(study.trials) == 3


@pytest.mark.parametrize("name", scheduler_names())
def test_every_registered_scheduler_builds_from_a_space(name):
    scheduler = tune_scheduler(space_with(scheduler={"type": name}), budget=600.0)
    assert isinstance(scheduler, TrialScheduler)


def qmc_sampler(seed: int, **options):
    return optuna.samplers.QMCSampler(seed=seed, **options)


def check_qmc(spec, where):
    if "scramble" in spec and not isinstance(spec["scramble"], bool):
        raise ConfigError(f"{where}: search.sampler.scramble must be true or false, got {spec['scramble']!r}")


def median_rule(options, max_epochs, budget, where):
    return MedianStoppingRule(
        time_attr="training_iteration", metric=METRIC, mode=MODE, grace_period=options["grace_period"]
    )


@pytest.fixture
def registered():
    register_sampler("qmc", keys=("scramble",), defaults={"scramble": True}, build=qmc_sampler, check=check_qmc)
    register_scheduler("median", keys=("grace_period",), defaults={"grace_period": 1}, build=median_rule)
    yield
    remove_sampler("qmc")
    remove_scheduler("median")


def test_a_registered_sampler_and_scheduler_are_space_choices(registered):
    space = space_with(sampler={"type": "qmc"}, scheduler={"type": "median", "grace_period": 2})
    sampler = optuna_sampler(space, seed=0)
    assert isinstance(sampler, optuna.samplers.QMCSampler) and sampler._scramble is True  # the registry's default
    assert space.settings.sampler.to_dict() == {"type": "qmc", "scramble": True}
    assert isinstance(tune_scheduler(space), MedianStoppingRule)
    with pytest.raises(ConfigError, match=r"search.sampler.scramble must be true or false, got 'yes'"):
        space_with(sampler={"type": "qmc", "scramble": "yes"})  # its own check, when the space is parsed
    with pytest.raises(ConfigError, match="unknown key 'warn_independent_sampling'"):
        space_with(sampler={"type": "qmc", "warn_independent_sampling": False})
    with pytest.raises(ConfigError, match="already registered"):
        register_sampler("qmc", build=qmc_sampler)
    with pytest.raises(ConfigError, match="nbtl's own"):
        remove_scheduler("asha")


def test_an_unregistered_type_is_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="search.sampler.type must be one of tpe, random, got 'qmc'"):
        space_with(sampler={"type": "qmc"})
    assert isinstance(tune_scheduler(space_with(scheduler={"type": "fifo"})), FIFOScheduler)
    assert get_sampler("tpe").defaults == {"constant_liar": True}
    assert get_scheduler("asha").defaults == {"grace_period": 1, "reduction_factor": 2, "unit": "epochs"}
