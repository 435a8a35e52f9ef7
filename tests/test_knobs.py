"""Tests of two trial knobs: ``head_warmup_epochs`` (LP-FT) and ``l2sp_blocks`` (L2-SP below a block,
plain L2 above), with real torch, the packaged EfficientNet-Lite0 weights and digits at 32 px."""

from __future__ import annotations

import pytest
import torch

from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.train import train_trial
from nbtl.transfer import build_transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LITE0 = "efficientnet_lite0"
CPU = torch.device("cpu")
NUM_CLASSES = 10
WARMUP = dict(backbone=LITE0, freeze_blocks=7, head_warmup_epochs=1, lr=0.05, epochs=3, batch_size=16, seed=2)


def _train(splits, weights, config=WARMUP, **kwargs):
    states, metrics = [], []

    def report(epoch_metrics, state):
        metrics.append(dict(epoch_metrics))
        states.append(state())

    result = train_trial(TrialConfig.from_dict(config), splits, state_dict=weights, report=report, device=CPU, **kwargs)
    return result, states


def _without_time(history):
    return [{k: v for k, v in m.items() if k not in ("epoch_time_s", "prefix_cache_hit")} for m in history]


def _changed(before: dict, after: dict, prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def warmup_run(splits, weights):
    return _train(splits, weights)


# --- head_warmup_epochs (LP-FT) -------------------------------------------------------------


def test_warmup_trains_the_head_alone_then_the_unfrozen_blocks(warmup_run, weights, splits):
    result, states = warmup_run
    initial = build_transfer(TrialConfig.from_dict(WARMUP), NUM_CLASSES, state_dict=weights).model.state_dict()
    after_warmup, after_next = states[0]["model"], states[1]["model"]
    assert _changed(initial, after_warmup, "backbone.") == set()  # weights and BatchNorm statistics
    assert _changed(initial, after_warmup, "head.") == {k for k in initial if k.startswith("head.")}
    moved = _changed(after_warmup, after_next, "backbone.")
    assert any(k.startswith("backbone.blocks.7.") for k in moved)
    assert any(k.startswith("backbone.blocks.8.") for k in moved)
    assert not any(k.startswith(tuple(f"backbone.blocks.{i}." for i in range(7))) for k in moved)
    # Warm-up reads pooled features (all 9 blocks cached), then the cached outputs of blocks [0, 7).
    assert [m["prefix_blocks"] for m in result.history] == [9, 7, 7]
    assert result.final["best_val_accuracy"] > 0.2


def test_warmup_cached_matches_uncached_and_resumes_across_the_boundary(warmup_run, splits, weights):
    full, states = warmup_run
    uncached, _ = _train(splits, weights, cache_prefix=False)
    for got, expected in zip(full.history, uncached.history):
        for key in ("train_loss", "val_loss", "val_accuracy", "test_accuracy"):
            assert got[key] == pytest.approx(expected[key], abs=1e-3), key
    resumed, resumed_states = _train(splits, weights, resume=states[0])  # checkpoint taken during warm-up
    assert _without_time(resumed.history) == _without_time(full.history)
    for key, value in states[-1]["model"].items():
        assert torch.equal(resumed_states[-1]["model"][key], value), key


@pytest.mark.parametrize("values, message", [
    ({"head_warmup_epochs": 3, "epochs": 3},
     "trial config: head_warmup_epochs must be < epochs (3): some epochs must train the unfrozen blocks, got 3"),
    ({"head_warmup_epochs": -1}, "trial config: head_warmup_epochs must be an integer >= 0, got -1"),
    ({"head_warmup_epochs": 1.5}, "trial config: head_warmup_epochs must be an integer >= 0, got 1.5"),
    ({"l2sp_blocks": -2}, "trial config: l2sp_blocks must be an integer >= 0, got -2"),
    ({"l2sp_blocks": True}, "trial config: l2sp_blocks must be an integer >= 0, got True"),
])  # fmt: skip
def test_knob_validation_names_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict(values)
    assert str(error.value) == message


def test_knobs_are_config_keys():
    config = TrialConfig.from_dict({"head_warmup_epochs": 2, "l2sp_blocks": 4})
    assert {"head_warmup_epochs", "l2sp_blocks"} <= set(TrialConfig.keys())
    assert config.to_dict()["head_warmup_epochs"] == 2 and config.to_dict()["l2sp_blocks"] == 4
    assert TrialConfig().head_warmup_epochs == 0 and TrialConfig().l2sp_blocks is None


# --- l2sp_blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("l2sp_blocks", [4, None, 0])
def test_l2sp_applies_below_l2sp_blocks_and_plain_l2_above(weights, l2sp_blocks):
    alpha, beta, gamma = 0.3, 0.05, 0.7
    config = TrialConfig(
        backbone=LITE0,
        transfer_blocks=6,
        freeze_blocks=2,
        l2sp_alpha=alpha,
        l2_beta=beta,
        l2_head=gamma,
        l2sp_blocks=l2sp_blocks,
        head="mlp",
        head_width=8,
    )
    setup = build_transfer(config, NUM_CLASSES, state_dict=weights)
    model, regularizer = setup.model, setup.regularizer
    anchored_end = 6 if l2sp_blocks is None else max(2, l2sp_blocks)
    torch.manual_seed(0)
    with torch.no_grad():  # move every weight away from w⁰ so both terms of the gradient matter
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    regularizer().backward()

    counts = {"anchored": 0, "unanchored": 0, "new": 0}
    for i, block in enumerate(model.blocks):
        for name, p in block.named_parameters():
            if i < 2 or p.ndim == 1:
                assert p.grad is None
                continue
            w = p.detach()
            if i < anchored_end:
                torch.testing.assert_close(p.grad, alpha * (w - weights[f"blocks.{i}.{name}"]) + beta * w)
                counts["anchored"] += 1
            elif i < 6:
                torch.testing.assert_close(p.grad, beta * w)
                counts["unanchored"] += 1
            else:
                torch.testing.assert_close(p.grad, gamma * w)
                counts["new"] += 1
    # w⁰ is stored only for the weights pulled towards it.
    assert len(regularizer.transferred) == len(regularizer.references()) == counts["anchored"]
    assert len(regularizer.unanchored) == counts["unanchored"]
    assert counts["new"] > 0 and (counts["anchored"] > 0) == (anchored_end > 2)
    assert (counts["unanchored"] > 0) == (anchored_end < 6)
