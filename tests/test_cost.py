"""The cost model (nbtl.search.cost): a trial's seconds here from its config, measured once per backbone and size."""

from __future__ import annotations

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
