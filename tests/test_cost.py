"""The cost model (nbtl.search.cost): a trial's seconds here from its config, measured once per backbone and size."""

from __future__ import annotations

import dataclasses

import pytest

from nbtl.config import TrialConfig
from nbtl.search.cost import measure_speed, trial_seconds


@pytest.fixture(scope="module")
def speed():
    return measure_speed("efficientnet_lite0", 32)


def test_a_measured_speed_is_real_and_measured_once(speed):
    assert len(speed.block_share) == 9 and sum(speed.block_share) == pytest.approx(1.0)
    assert 0 < speed.forward_s < speed.train_s  # a training step costs more than a forward pass
    assert measure_speed("efficientnet_lite0", 32) is speed


def test_a_trial_costs_more_the_more_it_trains(speed):
    def seconds(cached: bool = True, **values) -> float:
        return trial_seconds(TrialConfig(**{"epochs": 4, **values}), speed, 500, 200, cached=cached)

    probe = seconds(freeze_blocks=9)
    frozen, full = seconds(freeze_blocks=6, head="mlp"), seconds(freeze_blocks=0)
    assert probe < frozen < full
    assert seconds(freeze_blocks=6, head="mlp", cached=False) > frozen  # the cache skips the frozen prefix
    assert seconds(freeze_blocks=0, epochs=8) == pytest.approx(2 * full)  # every epoch trains every block
    assert trial_seconds(TrialConfig(epochs=4), speed, 1000, 200) > full  # more training images, longer epochs


def test_auto_picks_the_largest_size_whose_start_points_fit_a_quarter_of_the_budget(speed):
    from nbtl.heuristics.recipes import conventional_config, probe_config
    from nbtl.search.cost import AUTO_SHARE, auto_image_size, scaled

    # 64 px at 3 times 32 px's seconds (about what measure_speed gives on an idle machine), so the sizes picked here
    # do not hang on two timings taken on a busy one (the measurement has its own test below)
    big = dataclasses.replace(speed, image_size=64, forward_s=3 * speed.forward_s, train_s=3 * speed.train_s)
    at = scaled(speed, big, 48)
    assert speed.train_s < at.train_s < big.train_s and scaled(speed, big, 64).train_s == pytest.approx(big.train_s)
    configs = [
        TrialConfig.from_dict({**c("efficientnet_lite0"), "epochs": 3}) for c in (probe_config, conventional_config)
    ]

    def start_cost(size: int) -> float:
        return sum(trial_seconds(c, scaled(speed, big, size), 300, 100) for c in configs)

    budget = start_cost(96) / AUTO_SHARE * 1.01  # 96 px just fits, 128 does not
    size, why = auto_image_size(224, configs, lambda s: scaled(speed, big, s), 300, 100, budget)
    assert size == 96 and "96px" in why and "128px would take" in why
    assert auto_image_size(224, configs, lambda s: scaled(speed, big, s), 300, 100, 1e9)[0] == 224
    smallest, why = auto_image_size(224, configs, lambda s: scaled(speed, big, s), 300, 100, 1e-3)
    assert smallest == 32 and "longer --time-budget" in why


def test_a_larger_image_measures_slower_and_never_extrapolates_cheaper(speed):
    from nbtl.search.cost import MIN_SIZE_POWER, scaled

    big = measure_speed("efficientnet_lite0", 128)  # 16 times the pixels: slower even on a busy machine
    assert big.train_s > speed.train_s and big.forward_s > speed.forward_s
    # timings inverted by a busy machine: the cost still grows with the side, at least as MIN_SIZE_POWER
    inverted = dataclasses.replace(speed, image_size=64, forward_s=speed.forward_s / 2, train_s=speed.train_s / 2)
    costs = [scaled(speed, inverted, size).train_s for size in (32, 64, 128, 224)]
    assert costs == sorted(costs) and costs[0] == pytest.approx(speed.train_s)
    assert costs[-1] == pytest.approx(speed.train_s * (224 / 32) ** MIN_SIZE_POWER)
