"""A new regulariser is one file: this one registers an L1 penalty on the head's weights (``l1_head``: λ‖w_head‖₁,
sparse heads) with ``nbtl.regularizers.register_regularizer``, and without touching any other file a trial config and
a search space accept its knob, the linear probe switches it off, a newly fitted learned recommender reads it, a real
trial on real images trains with it (its head ends sparser), and the registry's common check holds for it."""

from __future__ import annotations

import math

import pytest
import torch
from test_regularizers import check_regularizer
from torch import nn

from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.heuristics.learned import config_inputs, encode
from nbtl.heuristics.recipes import probe_config
from nbtl.regularizers import Knob, register_regularizer, remove_regularizer
from nbtl.search.space import parse_space
from nbtl.train import train_trial


class L1(nn.Module):
    def __init__(self, weights: list[nn.Parameter], strength: float):
        super().__init__()
        self.weights, self.strength = weights, float(strength)

    def forward(self) -> torch.Tensor:
        live = [w for w in self.weights if w.requires_grad]
        if not self.strength or not live:
            return torch.zeros(())
        return self.strength * sum(w.abs().sum() for w in live)


def l1_head_penalty(weights, config) -> L1:
    return L1(weights.head, config.l1_head)


@pytest.fixture(scope="module", autouse=True)
def l1_head():
    """Registered for this file's tests only (the registry is the process's)."""
    register_regularizer(
        "l1_head",
        knobs=[
            Knob("l1_head", 0.0, high=1.0, off=0.0, learned_input="log_l1_head", encode=lambda v: math.log10(v + 1e-6))
        ],
        penalty=l1_head_penalty,
        description="L1 on the head's weights",
    )
    yield "l1_head"
    remove_regularizer("l1_head")


def test_its_knob_is_a_config_key_a_space_parameter_and_off_in_the_probe(l1_head):
    config = TrialConfig.from_dict({"l1_head": "0.01"})  # as an MLflow param reads back
    assert config.l1_head == 0.01 and config.to_dict()["l1_head"] == 0.01 and TrialConfig().l1_head == 0.0
    with pytest.raises(ConfigError, match="l1_head must be >= 0.0 and <= 1.0"):
        TrialConfig.from_dict({"l1_head": 2.0})
    space = parse_space({"parameters": {"l1_head": {"choices": [0.0, 0.01]}, "epochs": 2}})
    assert space.project({"l1_head": 0.02})[0] == {"l1_head": 0.01}
    assert probe_config("efficientnet_lite0")["l1_head"] == 0.0
    assert "log_l1_head" in config_inputs()
    assert encode({"num_blocks": 9, "l1_head": 0.01}, ["log_l1_head"])[0] == pytest.approx(math.log10(0.010001))
    with pytest.raises(ConfigError, match="already belongs"):
        register_regularizer("l1_again", knobs=[Knob("l1_head", 0.0)])


def test_it_passes_the_common_regularizer_check(l1_head, weights):
    check_regularizer(l1_head, weights)


def test_a_real_trial_trains_with_it_and_its_head_ends_sparser(l1_head, splits, weights, one_torch_thread):
    def head_l1(strength: float) -> float:
        # an MLP head: a frozen backbone under a linear head is the probe, fitted by L-BFGS (nbtl.fit.probe)
        values = {"freeze_blocks": 9, "head": "mlp", "head_width": 32, "epochs": 3, "batch_size": 16, "lr": 0.05}
        values["l1_head"] = strength
        config = TrialConfig.from_dict(values)
        result = train_trial(config, splits, state_dict=weights)
        assert len(result.history) == 3 and all(math.isfinite(r["train_loss"]) for r in result.history)
        head = [v for k, v in result.best_weights.items() if k.startswith("head.") and v.ndim > 1]
        return sum(float(v.abs().sum()) for v in head)

    assert head_l1(0.01) < 0.8 * head_l1(0.0)
