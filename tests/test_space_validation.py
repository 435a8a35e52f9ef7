"""A search space that could only fail later (in a trial, in Optuna's sampler, in Ray Tune's scheduler) fails
when it is loaded, in one line naming the file, the key, the bad value and the fix; and ``nbtl search`` with
such a space exits 2 before it decodes data, starts Ray or opens an MLflow run."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.search.space import load_space, parse_space
from nbtl.transfer import resolve_blocks

BASE = {
    "name": "unit",
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "search": {
        "trials": 4,
        "seed": 0,
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    },
    "parameters": {
        "backbone": {"choices": ["efficientnet_lite0", "resnet18"]},  # 9 and 5 blocks
        "transfer_blocks": {"low": 0, "high": "all"},
        "freeze_blocks": {"low": 0, "high": "transfer_blocks"},
        "lr": {"low": 1.0e-3, "high": 0.1, "log": True},
        "head": {"choices": ["linear", "mlp", "spinal"]},
        "epochs": 2,
    },
}


def document(parameters: dict | None = None, **sections) -> dict:
    """BASE with ``parameters`` replaced (None removes one) and ``sections`` merged into their section."""
    doc = copy.deepcopy(BASE)
    for name, spec in (parameters or {}).items():
        if spec is None:
            doc["parameters"].pop(name, None)
        else:
            doc["parameters"][name] = spec
    for section, values in sections.items():
        doc[section].update(values)
    return doc


def rejected(doc: dict, *fragments: str) -> str:
    with pytest.raises(ConfigError) as error:
        parse_space(doc, where="space.yaml")
    message = str(error.value)
    assert message.startswith("space.yaml: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_base_document_is_valid():
    parse_space(document(), where="space.yaml")


# --- scheduler and sampler settings that Ray Tune / Optuna would refuse later ---------------------------


@pytest.mark.parametrize("scheduler, fragments", [
    ({"grace_period": 3}, ["search.scheduler.grace_period: 3 is more than the trials' epochs (2)", "grace_period <= 2"]),
    ({"grace_period": 0}, ["search.scheduler.grace_period must be an integer >= 1", "got 0"]),
    ({"grace_period": 1.5}, ["search.scheduler.grace_period must be an integer >= 1", "got 1.5"]),
    ({"grace_period": "1"}, ["search.scheduler.grace_period must be an integer >= 1", "got '1'"]),
    ({"reduction_factor": 1}, ["search.scheduler.reduction_factor must be a number > 1", "got 1"]),
    ({"reduction_factor": 0.5}, ["search.scheduler.reduction_factor must be a number > 1", "got 0.5"]),
    ({"reduction_factor": "two"}, ["search.scheduler.reduction_factor must be a number > 1", "got 'two'"]),
    ({"unit": "minutes"}, ["search.scheduler.unit must be epochs or seconds", "got 'minutes'"]),
    ({"unit": "seconds"}, ["grace_period must be a number of seconds > 0 with unit: seconds", "got None"]),
    ({"unit": "seconds", "grace_period": 30, "max_t": 20}, ["max_t must be a number of seconds above grace_period"]),
    ({"max_t": 100}, ["search.scheduler.max_t is for unit: seconds"]),
])  # fmt: skip
def test_bad_asha_settings_are_rejected(scheduler, fragments):
    rejected(document(search={"scheduler": {"type": "asha", **scheduler}}), *fragments)


@pytest.mark.parametrize(
    "scheduler", [{"type": "asha", "grace_period": 2, "reduction_factor": 1.5}, {"type": "asha"}, {"type": "fifo"}]
)
def test_asha_settings_ray_accepts_pass(scheduler):
    from ray.tune.schedulers import ASHAScheduler

    space = parse_space(document(search={"scheduler": scheduler}), where="space.yaml")
    if scheduler["type"] == "asha":  # what the runner builds from it
        ASHAScheduler(
            time_attr="training_iteration",
            metric="m",
            mode="max",
            max_t=space.max_epochs,
            grace_period=scheduler.get("grace_period", 1),
            reduction_factor=scheduler.get("reduction_factor", 2),
        )


def test_grace_period_may_reach_the_longest_trial():
    parse_space(document({"epochs": {"choices": [2, 6]}}, search={"scheduler": {"type": "asha", "grace_period": 4}}))


@pytest.mark.parametrize("sampler, fragments", [
    ({"n_startup_trials": "ten"}, ["search.sampler.n_startup_trials must be an integer >= 0", "got 'ten'"]),
    ({"n_startup_trials": -1}, ["search.sampler.n_startup_trials must be an integer >= 0", "got -1"]),
    ({"n_startup_trials": 2.5}, ["search.sampler.n_startup_trials must be an integer >= 0", "got 2.5"]),
    ({"multivariate": "yes"}, ["search.sampler.multivariate must be true or false", "got 'yes'"]),
    ({"constant_liar": 1}, ["search.sampler.constant_liar must be true or false", "got 1"]),
    ({"group": True, "multivariate": False}, ["search.sampler.group: true needs multivariate", "multivariate: true"]),
])  # fmt: skip
def test_bad_sampler_settings_are_rejected(sampler, fragments):
    rejected(document(search={"sampler": {"type": "tpe", **sampler}}), *fragments)


def test_sampler_settings_optuna_accepts_pass():
    spec = {"n_startup_trials": 0, "multivariate": True, "group": True, "constant_liar": False}
    parse_space(document(search={"sampler": {"type": "tpe", **spec}}))
    optuna.samplers.TPESampler(seed=0, **spec)


@pytest.mark.parametrize("prior, fragments", [
    ({"n_candidates": 0}, ["search.prior.n_candidates must be an integer >= 1", "got 0"]),
    ({"n_candidates": "many"}, ["search.prior.n_candidates must be an integer >= 1", "got 'many'"]),
    ({"enabled": "yes"}, ["search.prior.enabled must be true or false", "got 'yes'"]),
])  # fmt: skip
def test_bad_prior_settings_are_rejected(prior, fragments):
    rejected(document(search={"prior": prior}), *fragments)


@pytest.mark.parametrize("value", [0, 1.5, "most"])
def test_a_bad_subsample_is_rejected_and_a_good_one_read(value):
    rejected(document(search={"subsample": value}), "search: subsample must be auto", f"got {value!r}")
    assert parse_space(document(search={"subsample": 0.25})).settings.subsample == 0.25
    assert parse_space(document(search={"subsample": "all"})).settings.subsample == 1.0
    assert parse_space(document()).settings.subsample == "auto"


# --- block counts every trial of the space must be able to build -----------------------------------------


@pytest.mark.parametrize("parameters, fragments", [
    # fixed freeze_blocks above a fixed transfer_blocks: every trial fails in resolve_blocks
    ({"transfer_blocks": 3, "freeze_blocks": 5},
     ["parameters.freeze_blocks: 5 is more than transfer_blocks (3)", "use freeze_blocks <= 3"]),
    # transfer_blocks beyond the blocks of one of the backbones (resnet18 has 5)
    ({"transfer_blocks": 7}, ["parameters.transfer_blocks: 7 is more blocks than resnet18 has (5)", "use at most 5"]),
    ({"backbone": "efficientnet_lite0", "transfer_blocks": {"choices": [3, 12]}},
     ["parameters.transfer_blocks: 12 is more blocks than efficientnet_lite0 has (9)"]),
    ({"l2sp_blocks": 20}, ["parameters.l2sp_blocks: 20 is more blocks than resnet18 has (5)"]),
    ({"freeze_blocks": {"choices": [0, 11]}}, ["parameters.freeze_blocks: 11 is more blocks than resnet18 has (5)"]),
    # a range no trial can take: low above every backbone's blocks
    ({"transfer_blocks": {"low": 12, "high": "all"}},
     ["parameters.transfer_blocks: low 12 is more blocks than efficientnet_lite0 has (9)", "lower low to at most 9"]),
    # a freeze range whose low is above every transfer_blocks
    ({"transfer_blocks": 3, "freeze_blocks": {"low": 6, "high": 8}},
     ["parameters.freeze_blocks: low 6 is more than any trial transfers (transfer_blocks is at most 3)"]),
    ({"transfer_blocks": {"low": 0, "high": 3}, "freeze_blocks": {"low": "all-1", "high": "transfer_blocks"}},
     ["parameters.freeze_blocks: low 'all-1' (8 for efficientnet_lite0) is more than any trial transfers"]),
    # a fixed freeze_blocks that some sampled transfer_blocks cannot take
    ({"transfer_blocks": {"low": 2, "high": "all"}, "freeze_blocks": 4},
     ["parameters.freeze_blocks: 4, but transfer_blocks can be as low as 2", "raise transfer_blocks' low to 4"]),
    ({"pretrained": {"choices": [True, False]}, "transfer_blocks": None, "freeze_blocks": 2, "lr": None},
     ["parameters.freeze_blocks: 2, but pretrained can be false"]),
    # literal values the trial config refuses (block values used to skip the trial config's checks)
    ({"transfer_blocks": "all"}, ["parameters.transfer_blocks: transfer_blocks must be an integer >= 0, got 'all'"]),
    ({"freeze_blocks": -1}, ["parameters.freeze_blocks: freeze_blocks must be an integer >= 0, got -1"]),
    ({"freeze_blocks": 2.5}, ["parameters.freeze_blocks: freeze_blocks must be an integer >= 0, got 2.5"]),
    ({"head_warmup_epochs": 2}, ["parameters.head_warmup_epochs: 2 is not below epochs (2)", "use head_warmup_epochs < 2"]),
    ({"head_warmup_epochs": {"choices": [0, 3]}, "epochs": {"choices": [3, 6]}},
     ["parameters.head_warmup_epochs: 3 is not below epochs (3)"]),
    ({"backbone": "efficientnet_lite0", "block_lrs": [0.01, 0.01, 0.01]},
     ["parameters.block_lrs: 3 learning rates, but efficientnet_lite0 has 9 blocks"]),
])  # fmt: skip
def test_configs_that_cannot_build_are_rejected(parameters, fragments):
    rejected(document(parameters), *fragments)


@pytest.mark.parametrize("parameters", [
    {"transfer_blocks": {"low": 7, "high": "all"}},                      # resnet18 trials take 5: some values work
    {"freeze_blocks": {"low": 4, "high": "transfer_blocks"}},            # capped per trial
    {"transfer_blocks": {"low": 4, "high": "all"}, "freeze_blocks": 4},  # every trial transfers >= 4
    {"transfer_blocks": 5, "freeze_blocks": {"low": 0, "high": 8}},      # high is capped to transfer_blocks
    {"pretrained": {"choices": [True, False]}, "lr": None},              # freeze range is 0 without pre-training
    {"backbone": "efficientnet_lite0", "block_lrs": [0.01] * 9, "head_warmup_epochs": 1},
])  # fmt: skip
def test_spaces_whose_configs_build_pass(parameters):
    """Every config these spaces sample builds (the real transfer code resolves its blocks)."""
    doc = document(parameters)
    if "pretrained" in parameters:  # pretrained must come before the block ranges
        doc["parameters"] = {"pretrained": doc["parameters"].pop("pretrained"), **doc["parameters"]}
    space = parse_space(doc, where="space.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        config = TrialConfig.from_dict({**trial.params, **space.sample(trial)})
        resolve_blocks(config)
        study.tell(trial, 0.0)


# --- points_to_evaluate -------------------------------------------------------------------------------


@pytest.mark.parametrize("point, fragments", [
    ({"head": "conv"}, ["search.points_to_evaluate[0].head: 'conv' is not one of its choices", "'linear', 'mlp', 'spinal'"]),
    ({"lr": "fast"}, ["search.points_to_evaluate[0].lr: must be a number", "got 'fast'"]),
    ({"lr": True}, ["search.points_to_evaluate[0].lr: must be a number", "got True"]),
    ({"lr": -0.1}, ["search.points_to_evaluate[0].lr: lr must be > 0", "got -0.1"]),
    ({"transfer_blocks": 2.5}, ["search.points_to_evaluate[0].transfer_blocks: must be an integer", "got 2.5"]),
    ({"transfer_blocks": 8}, ["search.points_to_evaluate[0].transfer_blocks: 8 is more blocks than resnet18 has (5)"]),
    ({"backbone": "efficientnet_lite0", "transfer_blocks": 12},
     ["search.points_to_evaluate[0].transfer_blocks: 12 is more blocks than efficientnet_lite0 has (9)"]),
    ({"transfer_blocks": 3, "freeze_blocks": 5},
     ["search.points_to_evaluate[0].freeze_blocks: 5 is more than transfer_blocks (3)"]),
    ({"freeze_blocks": 4}, ["search.points_to_evaluate[0].freeze_blocks: 4, but transfer_blocks can be as low as 0",
                            "set transfer_blocks >= 4 in this point too"]),
])  # fmt: skip
def test_bad_points_to_evaluate_are_rejected(point, fragments):
    rejected(
        document(search={"points_to_evaluate": [{"backbone": "resnet18"}, point]}),
        *[f.replace("[0]", "[1]") for f in fragments],
    )


def test_points_inside_the_space_pass_and_outside_a_range_warn(caplog):
    points = [
        {"backbone": "efficientnet_lite0", "transfer_blocks": 8, "freeze_blocks": 8, "head": "mlp"},
        {"lr": 1.0e20},
    ]  # outside the range: Optuna runs it as given (a deliberate diverging trial)
    with caplog.at_level(logging.WARNING, logger="nbtl.search.space_checks"):
        space = parse_space(document(search={"points_to_evaluate": points}), where="space.yaml")
    assert [r.getMessage() for r in caplog.records] == [
        (
            "space.yaml: search.points_to_evaluate[1].lr: 1e+20 is outside the space's range 0.001..0.1; "
            "Optuna runs the point as given"
        )
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in points:
        study.enqueue_trial(point)
    for point in points:
        trial = study.ask()
        config = TrialConfig.from_dict({**trial.params, **space.sample(trial)})
        resolve_blocks(config)
        assert {k: trial.params[k] for k in point} == point


def test_load_space_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(document(search={"scheduler": {"type": "asha", "reduction_factor": 1}}), sort_keys=False)
    )
    with pytest.raises(ConfigError, match=f"^{path}: search.scheduler.reduction_factor must be a number > 1"):
        load_space(path)


# --- end to end: nbtl search with a bad space ---------------------------------------------------------


def test_nbtl_search_with_a_bad_space_exits_2_at_once_and_opens_no_run(tmp_path):
    tiny = yaml.safe_load((Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml").read_text())
    tiny["search"]["scheduler"]["grace_period"] = 3  # the trials run 2 epochs
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump(tiny, sort_keys=False))
    store = tmp_path / "mlflow.db"
    started = time.monotonic()
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbtl",
            "search",
            str(space),
            "--data",
            "digits",
            "--tracking-uri",
            f"sqlite:///{store}",
            "--storage-path",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert process.returncode == 2, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in process.stderr, process.stderr[-3000:]
    assert f"{space}: search.scheduler.grace_period: 3 is more than the trials' epochs (2)" in lines[0]
    assert "decoded" not in process.stdout and "MLflow" not in process.stdout  # no data, no run, no Ray
    assert not (tmp_path / "results").exists()
    if store.exists():  # nothing was written to the tracking store
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments)
    assert elapsed < 60, elapsed  # the import of nbtl and torch; a search would decode data and start Ray first


def test_asha_rungs_in_seconds_end_at_the_time_budget_or_max_t():
    from ray.tune.schedulers import ASHAScheduler

    from nbtl.search.cluster import SearchError
    from nbtl.search.options import tune_scheduler

    seconds = {"type": "asha", "unit": "seconds", "grace_period": 20, "reduction_factor": 3}
    space = parse_space(document(search={"scheduler": seconds}), where="space.yaml")
    scheduler = tune_scheduler(space, budget=600.0)
    assert isinstance(scheduler, ASHAScheduler) and scheduler._time_attr == "time_total_s"
    assert scheduler._max_t == 600.0
    assert [rung for rung, _ in scheduler._brackets[0]._rungs] == [540.0, 180.0, 60.0, 20.0]  # seconds: 20 x 3^k
    capped = parse_space(document(search={"scheduler": {**seconds, "max_t": 120}}), where="space.yaml")
    assert tune_scheduler(capped, budget=600.0)._max_t == 120.0
    with pytest.raises(SearchError, match="needs max_t"):
        tune_scheduler(space, budget=None)
    assert tune_scheduler(parse_space(document(), where="space.yaml"))._time_attr == "training_iteration"
