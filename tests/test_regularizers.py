"""The regulariser registry's common check (timm's habit: every registered entry passes it, a test's own toy too):
each knob is a trial-config key that validates, round-trips through MLflow's text and is switched off by the linear
probe; each learned input is one the recommender can encode; each penalty is a real term of a real model's loss,
with a gradient when on and zero when off."""

from __future__ import annotations

import math

import pytest
import torch

from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.heuristics.learned import default_inputs, encodable_inputs, encode
from nbtl.heuristics.recipes import probe_config
from nbtl.regularizers import get_regularizer, off_values, regularizer_names, remove_regularizer
from nbtl.transfer import build_transfer


def on_value(knob):
    """A value that switches the knob's regulariser on: 0.1, or its upper bound when lower."""
    return min(0.1, knob.high) if knob.high is not None else 0.1


def check_regularizer(name: str, weights: dict) -> None:
    """What every registered regulariser must do (the common check of the regulariser registry)."""
    entry = get_regularizer(name)
    probe = probe_config("efficientnet_lite0")
    assert entry.knobs, f"{name}: a regulariser has at least one knob"
    for knob in entry.knobs:
        assert knob.name in TrialConfig.keys()
        config = TrialConfig.from_dict({knob.name: knob.default})
        assert getattr(config, knob.name) == knob.default and knob.name in config.to_dict()
        as_text = {k: str(v) for k, v in config.to_dict().items() if k == knob.name}  # MLflow params are text
        assert getattr(TrialConfig.from_dict(as_text), knob.name) == knob.default
        bad = knob.low - 1
        with pytest.raises(ConfigError, match=knob.name):
            TrialConfig.from_dict({knob.name: bad})
        if knob.off is not None:
            assert probe[knob.name] == knob.off == off_values()[knob.name]
        if knob.learned_input:
            assert knob.learned_input in encodable_inputs() and knob.learned_input in default_inputs()
            row = {"num_blocks": 9, knob.name: on_value(knob)}
            assert math.isfinite(float(encode(row, [knob.learned_input])[0]))
    if entry.penalty is None:
        return
    values = {k.name: on_value(k) for k in entry.knobs if k.off is not None}
    on = build_transfer(TrialConfig.from_dict({"freeze_blocks": 6, **values}), 5, state_dict=weights)
    torch.manual_seed(0)
    with torch.no_grad():  # away from the pre-trained weights, so a pull towards them is felt too
        for p in on.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert name in on.regularizer
    penalty = on.regularizer[name]()
    assert penalty.ndim == 0 and penalty.item() > 0, f"{name}: switched on, its penalty is {penalty.item()}"
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in on.model.parameters())
    off = build_transfer(TrialConfig.from_dict({"freeze_blocks": 6, **off_values()}), 5, state_dict=weights)
    assert name not in off.regularizer or off.regularizer[name]().item() == 0.0


@pytest.mark.parametrize("name", regularizer_names())
def test_every_registered_regularizer_passes_the_common_check(name, weights):
    check_regularizer(name, weights)


def test_the_sum_of_the_penalties_is_the_loss_term_and_nbtls_own_stay():
    setup = build_transfer(TrialConfig(l2_beta=0.01, freeze_blocks=6), 5, state_dict=None)
    total = setup.regularizer()
    assert total.item() == pytest.approx(sum(setup.regularizer[n]().item() for n in setup.regularizer.terms))
    with pytest.raises(ConfigError, match="one of nbtl's own; it cannot be removed"):
        remove_regularizer("l2sp")
    with pytest.raises(ConfigError, match="unknown regulariser"):
        get_regularizer("l3")
