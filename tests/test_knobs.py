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


def test_every_keys_default_reads_as_a_built_config_has_it():
    built = TrialConfig()
    for key in TrialConfig.keys():  # the fields and every registered regulariser's knob (extra ones included)
        assert TrialConfig.default(key) == getattr(built, key), key
    assert TrialConfig.default("not_a_key", None) is None
    with pytest.raises(KeyError, match="'not_a_key' is not a trial config key"):
        TrialConfig.default("not_a_key")


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
    l2sp = regularizer["l2sp"]
    assert len(l2sp.transferred) == len(l2sp.references()) == counts["anchored"]
    assert len(l2sp.unanchored) == counts["unanchored"]
    assert counts["new"] > 0 and (counts["anchored"] > 0) == (anchored_end > 2)
    assert (counts["unanchored"] > 0) == (anchored_end < 6)


# --- the papers' recipes: lr_schedule, patience, Adam without momentum --------------------------

# Fully frozen (the linear probe on cached pooled features): seconds per trial, and every epoch the same steps.
# an MLP head on frozen pooled features: trained in microseconds a step (a linear one would be fitted, not trained)
RECIPE = dict(backbone=LITE0, freeze_blocks=9, head="mlp", head_width=16, lr=0.1, epochs=4, batch_size=16, seed=0)


def _group_lrs(states) -> list[list[float]]:
    """Each parameter group's learning rate after each epoch, from the optimizer's own state."""
    return [[group["lr"] for group in state["optimizer"]["param_groups"]] for state in states]


def test_constant_schedule_keeps_every_learning_rate(splits, weights):
    result, states = _train(splits, weights, {**RECIPE, "lr_schedule": "constant", "head_lr": 0.2, "lr_decay": 0.5})
    initial = build_transfer(TrialConfig.from_dict({**RECIPE, "head_lr": 0.2, "lr_decay": 0.5}), NUM_CLASSES).optimizer
    assert _group_lrs(states) == [[group["lr"] for group in initial.param_groups]] * 4
    assert [m["learning_rate"] for m in result.history] == [0.2] * 4
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # it still learns


@pytest.mark.parametrize(
    "steps, gamma, trained_at, after_last",
    [
        ([2], 0.1, [0.1, 0.1, 0.01, 0.01], 0.01),  # MultiStepLR: drops once, after epoch 2
        (1, 0.5, [0.1, 0.05, 0.025, 0.0125], 0.00625),  # StepLR: halves after every epoch
        (None, 0.5, [0.1, 0.05, 0.025, 0.0125], 0.00625),  # None: every epochs // 3 = 1 epoch
    ],
)
def test_step_schedule_drops_the_rate_after_the_right_epochs(splits, weights, steps, gamma, trained_at, after_last):
    config = {**RECIPE, "lr_schedule": "step", "lr_step_epochs": steps, "lr_gamma": gamma}
    result, states = _train(splits, weights, config)
    assert [m["learning_rate"] for m in result.history] == pytest.approx(trained_at)  # the rate of each epoch
    after = [lrs[-1] for lrs in _group_lrs(states)]  # the head group's rate after each epoch's last step
    assert after == pytest.approx(trained_at[1:] + [after_last])


def test_step_schedule_and_patience_resume_where_they_left_off(splits, weights):
    config = {**RECIPE, "lr_schedule": "step", "lr_step_epochs": [1, 3], "lr_gamma": 0.5}
    full, states = _train(splits, weights, config)
    resumed, _ = _train(splits, weights, config, resume=states[1])
    assert _without_time(resumed.history) == _without_time(full.history)
    stopped, stop_states = _train(splits, weights, {**RECIPE, "lr": 1e-12, "epochs": 6, "patience": 1})
    assert len(stopped.history) == 2
    again, more = _train(splits, weights, {**RECIPE, "lr": 1e-12, "epochs": 6, "patience": 1}, resume=stop_states[-1])
    assert len(again.history) == 2 and not more  # an early-stopped trial's checkpoint trains no more


def test_cosine_is_still_the_default_schedule(splits, weights):
    result, _ = _train(splits, weights, RECIPE)
    rates = [m["learning_rate"] for m in result.history]
    assert TrialConfig().lr_schedule == "cosine" and rates[0] == 0.1 and rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(0.1 * (1 + torch.cos(torch.tensor(3 / 4 * torch.pi)).item()) / 2, rel=1e-3)


def test_patience_stops_the_trial_and_reports_its_best_epoch(splits, weights):
    # a learning rate below float32 resolution: the weights never change, so no epoch beats the first
    config = {**RECIPE, "lr": 1e-12, "epochs": 8, "patience": 2}
    result, states = _train(splits, weights, config)
    assert [m["epoch"] for m in result.history] == [1, 2, 3]  # epoch 3 is 2 epochs past the best one
    assert [m["early_stopped"] for m in result.history] == [0.0, 0.0, 1.0]
    final = result.final
    assert final["stopped_at_epoch"] == 3 and final["best_epoch"] == 1 and len(states) == 3
    assert "stopped_at_epoch" not in result.history[1]
    # without patience the same trial trains every epoch
    full, _ = _train(splits, weights, {**config, "patience": None, "epochs": 4})
    assert len(full.history) == 4 and "early_stopped" not in full.final


def test_an_early_stopped_trial_is_finished_not_stopped_by_the_scheduler(tmp_path):
    from ray.tune import Result

    from nbtl.search.runner import results_table

    def result(name, epochs, **extra):
        metrics = {"epoch": epochs, "val_accuracy": 0.5, "best_val_accuracy": 0.5, **extra}
        return Result(
            metrics={**metrics, "config": {"epochs": 8}}, checkpoint=None, error=None, path=str(tmp_path / name)
        )

    table, _ = results_table(
        [result("patience", 3, early_stopped=1.0, stopped_at_epoch=3), result("asha", 3), result("full", 8)], {}
    )
    assert dict(zip(table["trial_id"], table["status"])) == {
        "patience": "FINISHED",
        "asha": "STOPPED",
        "full": "FINISHED",
    }


def test_adam_has_no_momentum_and_does_not_log_one(splits, weights):
    adam = TrialConfig.from_dict({**RECIPE, "optimizer": "adam", "momentum": 0.5})  # accepted, ignored
    assert "momentum" not in adam.to_dict() and adam.to_dict()["optimizer"] == "adam"
    assert TrialConfig.from_dict(adam.to_dict()).to_dict() == adam.to_dict()  # round trip without it
    optimizer = build_transfer(adam, NUM_CLASSES).optimizer
    assert isinstance(optimizer, torch.optim.Adam)
    assert all("momentum" not in group for group in optimizer.param_groups)
    sgd = TrialConfig.from_dict(RECIPE).to_dict()
    assert sgd["momentum"] == 0.9 and "lr_step_epochs" not in sgd and "lr_gamma" not in sgd
    step = TrialConfig.from_dict({**RECIPE, "lr_schedule": "step", "lr_step_epochs": "[2, 3]"})  # as MLflow returns it
    assert step.to_dict()["lr_step_epochs"] == [2, 3] and step.to_dict()["lr_gamma"] == 0.1


def test_a_linear_head_has_no_head_width():
    linear = TrialConfig.from_dict({**RECIPE, "head": "linear", "head_width": 256})  # accepted, ignored
    assert "head_width" not in linear.to_dict()
    assert TrialConfig.from_dict(linear.to_dict()).to_dict() == linear.to_dict()
    for head in ("mlp", "spinal"):
        assert TrialConfig.from_dict({**RECIPE, "head": head, "head_width": 64}).to_dict()["head_width"] == 64


def test_adam_run_logs_no_momentum_param(tmp_path, tracking_uri):
    import yaml
    from mlflow import MlflowClient

    from conftest import run_nbtl

    config = tmp_path / "adam.yaml"
    config.write_text(yaml.safe_dump({**RECIPE, "optimizer": "adam", "momentum": 0.5, "lr": 0.01, "epochs": 1}))
    done = run_nbtl(
        "train", str(config), "--data", "digits", "--per-class", "6", "--image-size", "16",
        "--tracking-uri", tracking_uri, "--no-floor", "--name", "adam", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("adam").experiment_id])
    assert run.data.params["optimizer"] == "adam" and "momentum" not in run.data.params
    assert "lr" in run.data.params and run.info.status == "FINISHED"


@pytest.mark.parametrize("values, message", [
    ({"lr_schedule": "linear"}, "trial config: lr_schedule must be one of cosine, constant, step, got 'linear'"),
    ({"lr_step_epochs": [3, 2]}, "trial config: lr_step_epochs must be an epoch count >= 1 (the period) or an "
     "increasing list of epochs, e.g. [30, 60], got [3, 2]"),
    ({"lr_gamma": 0.0}, "trial config: lr_gamma must be > 0.0 and <= 1.0, got 0.0"),
    ({"patience": 0}, "trial config: patience must be an integer >= 1, got 0"),
])  # fmt: skip
def test_recipe_validation_names_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict(values)
    assert str(error.value) == message


def test_recipe_keys_can_be_searched():
    from nbtl.search.space import parse_space

    space = parse_space(
        {
            "name": "recipes",
            "parameters": {
                "lr_schedule": {"choices": ["cosine", "constant", "step"]},
                "lr_step_epochs": {"low": 1, "high": 3, "when": {"lr_schedule": "step"}},
                "patience": 2,
                "epochs": 4,
            },
        }
    )
    assert {p.name for p in space.parameters} == {"lr_schedule", "lr_step_epochs", "patience", "epochs"}
