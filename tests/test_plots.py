"""The parent run's figures: real matplotlib, real Optuna importance evaluators."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from nbtl.search import load_space, plots


def synthetic_search(n: int = 16, seed: int = 0):
    """A search whose accuracy depends on lr only: lr must come out as the most important."""
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    rng = np.random.default_rng(seed)
    rows, configs = [], {}
    for i in range(n):
        lr = float(10 ** rng.uniform(-3, np.log10(0.05)))
        config = {
            "backbone": "efficientnet_lite0",
            "transfer_blocks": int(rng.integers(7, 10)),
            "lr": lr,
            "lr_decay": float(rng.uniform(0.5, 1.0)),
            "l2sp_alpha": float(rng.choice([0.0, 0.01])),
            "head": str(rng.choice(["linear", "spinal"])),
            "epochs": 2,
            "batch_size": 32,
        }
        config["freeze_blocks"] = int(rng.integers(5, config["transfer_blocks"] + 1))
        trial_id = f"t{i:02d}"
        configs[trial_id] = config
        rows.append(
            {
                "trial_id": trial_id,
                "status": "FAILED" if i == 3 else "FINISHED",
                "best_val_accuracy": None if i == 3 else 1.0 - abs(np.log10(lr) + 2.0) / 2,
            }
        )
    return space, pd.DataFrame(rows), configs


def test_importance_ranks_the_parameter_that_matters():
    space, table, configs = synthetic_search()
    study = plots.completed_study(table, configs, space)
    assert len(study.trials) == 15  # the failed trial is left out
    assert {"lr", "transfer_blocks", "freeze_blocks", "head"} <= set(study.trials[0].params)
    figure = plots.param_importances(study)
    assert figure is not None
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels[-1] == "lr", labels  # barh: the top bar is the most important
    importances = plots.fanova_importances(study)  # what the PNG and the HTML page both draw, computed once
    assert next(iter(importances)) == "lr" and sum(importances.values()) == pytest.approx(1.0)
    page = plots.optuna_html(study, importances)
    assert page.count("Plotly.newPlot") == 4 and '"orientation":"h"' in page


def test_importance_needs_two_trials():
    space, table, configs = synthetic_search(n=2)
    table = table.iloc[:1]
    assert plots.param_importances(plots.completed_study(table, configs, space)) is None


def test_best_so_far_is_a_running_maximum():
    figure = plots.best_so_far([0.2, 0.5, float("nan"), 0.4, 0.7])
    step = [line for line in figure.axes[0].get_lines() if line.get_label() == "best so far"][0]
    assert list(step.get_ydata()) == [0.2, 0.5, 0.5, 0.5, 0.7]


def test_best_so_far_over_time_is_a_running_maximum_in_time_order():
    figure = plots.best_so_far_over_time([30.0, 10.0, float("nan"), 20.0, 40.0], [0.4, 0.2, 0.9, float("nan"), 0.3])
    step = [line for line in figure.axes[0].get_lines() if line.get_label() == "best so far"][0]
    assert list(step.get_xdata()) == [10.0, 30.0, 40.0] and list(step.get_ydata()) == [0.2, 0.4, 0.4]
    assert figure.axes[0].get_xlabel() == "seconds since the search started"


def test_accuracy_curves_name_the_start_points():
    histories = {t: pd.DataFrame({"epoch": [1, 2], "val_accuracy": [0.3, 0.5]}) for t in ("a1", "b2", "c3")}
    figure = plots.accuracy_curves(histories, sources={"a1": "probe", "b2": "sampler"})
    assert sorted(line.get_label() for line in figure.axes[0].get_lines()) == ["a1 probe", "b2", "c3"]


def test_accuracy_curves_draw_one_line_per_trial():
    histories = {
        "a": pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.3, 0.5, 0.6]}),
        "b": pd.DataFrame({"epoch": [1], "val_accuracy": [0.2]}),
        "c": pd.DataFrame(),
    }
    figure = plots.accuracy_curves(histories)
    lines = figure.axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == ["a", "b"]
    assert list(lines[0].get_ydata()) == [0.3, 0.5, 0.6]


def test_importance_study_takes_full_trial_configs_with_inactive_conditional_parameters():
    # Ray's results hold full TrialConfig dicts: a linear-head trial still carries head_width=256 (the default),
    # which tiny.yaml's head_width (choices [32], only when head is spinal) must not see.
    from nbtl.config import TrialConfig

    space, table, configs = synthetic_search()
    full = {
        t: TrialConfig.from_dict({**c, **({"head_width": 32} if c["head"] == "spinal" else {})}).to_dict()
        for t, c in configs.items()
    }
    study = plots.completed_study(table, full, space)
    assert len(study.trials) == 15
    for trial in study.trials:
        assert ("head_width" in trial.params) == (trial.params["head"] == "spinal")


def asha_search(n: int = 24, seed: int = 0):
    """A search as ASHA leaves it, read back from its results.csv: every other trial STOPPED after 1 of its 2
    epochs, with the low accuracy of one epoch; the trials that ran both epochs score by lr alone."""
    space, _, configs = synthetic_search(n, seed)
    rows = []
    for i, (trial_id, config) in enumerate(configs.items()):
        stopped = i % 2 == 1
        accuracy = 0.1 if stopped else 1.0 - abs(np.log10(config["lr"]) + 2.0) / 2
        rows.append(
            {
                "trial_id": trial_id,
                "run_id": f"run{i}",
                "status": "STOPPED" if stopped else "FINISHED",
                **config,
                "epoch": 1 if stopped else 2,
                "best_val_accuracy": accuracy,
                "error": "",
            }
        )
    return space, pd.DataFrame(rows), configs


def test_importance_uses_only_trials_that_ran_all_their_epochs(tmp_path):
    space, table, configs = asha_search()
    table.to_csv(tmp_path / "results.csv", index=False)
    table = pd.read_csv(tmp_path / "results.csv")
    study = plots.completed_study(table, configs, space)
    finished = table[table["status"] == "FINISHED"]
    assert len(study.trials) == len(finished) == 12
    assert sorted(t.value for t in study.trials) == sorted(finished["best_val_accuracy"])  # no truncated 0.1
    figure = plots.param_importances(study)
    assert figure is not None and figure.axes[0].get_title() == "hyperparameter importance over 12 complete trials"


def test_importance_is_skipped_with_a_reason_below_three_complete_trials(caplog):
    import logging

    space, table, configs = asha_search(n=6)  # 3 FINISHED, 3 STOPPED
    table.loc[table["trial_id"] == "t00", "status"] = "FAILED"
    with caplog.at_level(logging.INFO, logger="nbtl.search.plots"):
        assert plots.param_importances(plots.completed_study(table, configs, space)) is None
    assert "no parameter-importance plot: 2 trial(s) ran all their epochs, fANOVA needs at least 3" in caplog.text


def test_optunas_interactive_plots_are_one_offline_page_of_every_scored_trial(tmp_path):
    import re

    space, table, configs = asha_search()
    table["finished_at_s"] = np.arange(len(table))[::-1]  # ended in reverse order
    history = plots.completed_study(table, configs, space, statuses=("FINISHED", "STOPPED"))
    assert len(history.trials) == len(table)  # stopped trials are part of the history
    assert [t.value for t in history.trials] == list(table["best_val_accuracy"][::-1])  # in the order they ended
    complete = plots.completed_study(table, configs, space)
    page = plots.optuna_html(history, plots.fanova_importances(complete), title="nbtl search toy")
    assert page.startswith("<!DOCTYPE html>") and "<title>nbtl search toy</title>" in page
    headings = re.findall(r"<h2>([^<]+)</h2>", page)
    assert [h.split(" (")[0] for h in headings] == [
        "Optimisation history",
        "Parallel coordinates",
        "Slices",
        "Hyperparameter importances",
    ]
    # plotly.js inlined once, so the page opens offline (an MLflow artifact), and each figure carries its data
    assert page.count("plotly.js v") == 1 and page.count("Plotly.newPlot") == 4
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no script fetched from a CDN
    # a page of two complete trials has no importances; none at all without a scored trial
    few = table[table["status"] == "FINISHED"].head(2)
    page = plots.optuna_html(
        plots.completed_study(few, configs, space), plots.fanova_importances(plots.completed_study(few, configs, space))
    )
    assert "importances" not in page and page.count("Plotly.newPlot") == 3
    assert plots.optuna_html(plots.completed_study(table.head(0), configs, space)) is None
