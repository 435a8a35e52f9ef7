"""Figures a person opens in the parent run instead of reading the table: validation accuracy of every
trial over epochs, the importance of each hyperparameter (Optuna's fANOVA evaluator), and the best
validation accuracy against the number of trials run and against wall time; and Optuna's own interactive plots
(:func:`optuna_html`: optimisation history, parallel coordinates, slices, importances) in one HTML page.

Plain matplotlib (Agg), Optuna and plotly; no Ray, no MLflow. Each figure function returns a ``Figure``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from nbtl.search.space import SearchSpace  # noqa: E402

METRIC = "best_val_accuracy"
#: Fewest trials that ran all their epochs for an importance plot: fANOVA's forest on fewer says nothing.
MIN_IMPORTANCE_TRIALS = 3

logger = logging.getLogger(__name__)


def accuracy_curves(
    histories: dict[str, pd.DataFrame], metric: str = "val_accuracy", sources: dict[str, str] | None = None
):
    """One line per trial: ``metric`` against epoch. ``histories`` maps trial id → per-epoch rows
    with columns ``epoch`` and ``metric``; ``sources`` (trial id → ``nbtl.source``) names the start points in the
    legend (``3f2a9c1e probe``), so a reader sees which line is the probe, the recipe or a recommendation."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trial_id, frame in sorted(histories.items()):
        if frame is None or frame.empty or metric not in frame:
            continue
        source = (sources or {}).get(trial_id, "sampler")
        label = str(trial_id) if source == "sampler" else f"{trial_id} {source}"
        ax.plot(frame["epoch"], frame[metric], marker="o", markersize=3, linewidth=1.2, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (trials stopped early, by ASHA, patience or the time budget, end sooner)")
    ax.grid(alpha=0.3)
    if 0 < len(histories) <= 16:
        ax.legend(fontsize=7, ncol=2, title="trial")
    fig.tight_layout()
    return fig


def best_so_far_over_time(seconds: Iterable[float], values: Iterable[float], metric: str = METRIC):
    """The best ``metric`` of the trials finished by each moment, against the seconds since the search started
    (what matters under a time budget); trials without a time or a score are left out."""
    points = sorted(
        (float(t), float(v))
        for t, v in zip(seconds, values, strict=True)
        if t is not None and v is not None and not math.isnan(float(t)) and not math.isnan(float(v))
    )
    best = list(itertools.accumulate((v for _, v in points), max))
    times = [t for t, _ in points]
    return _best_so_far_figure(times, [v for _, v in points], best, metric, "seconds since the search started")


def best_so_far(values: Iterable[float], metric: str = METRIC):
    """The best ``metric`` among the first *n* trials, against *n* (trials in completion order)."""
    values = [v for v in values]
    best, running = [], -math.inf
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            running = max(running, v)
        best.append(running if running > -math.inf else float("nan"))
    return _best_so_far_figure(list(range(1, len(values) + 1)), values, best, metric, "trials completed")


def _best_so_far_figure(x: list[float], values: list[float], best: list[float], metric: str, against: str):
    """Each trial's ``metric`` as a point and the running best as a step, against ``x`` (named ``against``: the
    trials completed, or the seconds since the search started)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(x, values, s=18, color="0.6", label="trial")
    ax.step(x, best, where="post", color="C0", linewidth=2, label="best so far")
    ax.set_xlabel(against)
    if against == "trials completed":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"best validation accuracy against {'trials run' if against == 'trials completed' else 'wall time'}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def completed_study(
    table: pd.DataFrame,
    configs: dict[str, dict[str, Any]],
    space: SearchSpace,
    statuses: tuple[str, ...] = ("FINISHED",),
):
    """An in-memory Optuna study holding the search's trials that ran all their epochs (``status`` FINISHED),
    so Optuna's importance evaluators can read them. Trials stopped early (STOPPED: by ASHA or the time
    budget) are left out: their best accuracy is that of fewer epochs, and would count as the effect of their
    hyperparameters. ``statuses=("FINISHED", "STOPPED")`` keeps every scored trial (the history of a search), in the
    order they ended (``finished_at_s``). Distributions are the space's; bounds that depend on other parameters
    (``all``, ``transfer_blocks``) take the range the trials actually used."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    searched = [p for p in space.parameters if not p.fixed]
    done = table[table["status"].isin(statuses) & table[METRIC].notna()] if not table.empty else table
    if "finished_at_s" in done:
        done = done.sort_values("finished_at_s", kind="stable")
    distributions: dict[str, Any] = {}
    for p in searched:  # a conditional parameter counts only in the trials where its condition held
        values = [
            configs[t].get(p.name)
            for t in done["trial_id"]
            if configs[t].get(p.name) is not None and p.active(configs[t])
        ]
        if not values:
            continue
        if p.choices is not None:
            distributions[p.name] = CategoricalDistribution(list(p.choices))
            continue
        low = p.low if not isinstance(p.low, str) else min(values)
        high = p.high if not isinstance(p.high, str) else max(values)
        low, high = min(low, min(values)), max(high, max(values))
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and isinstance(low, int):
            distributions[p.name] = IntDistribution(int(low), int(high), log=p.log and low > 0)
        else:
            distributions[p.name] = FloatDistribution(float(low), float(high), log=p.log and low > 0)
    study = optuna.create_study(direction="maximize", study_name="nbtl")
    for _, row in done.iterrows():
        config = configs[row["trial_id"]]
        by_name = {p.name: p for p in searched}
        params = {
            k: config[k]
            for k in distributions
            if config.get(k) is not None
            and by_name[k].active(config)
            and (by_name[k].choices is None or config[k] in by_name[k].choices)
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={k: distributions[k] for k in params}, value=float(row[METRIC])
            )
        )
    return study


def optuna_html(history, importances: dict[str, float] | None = None, title: str = "nbtl search") -> str | None:
    """Optuna's interactive plots as one HTML page (plotly.js inlined once, so it opens offline, e.g. as an MLflow
    artifact): the optimisation history, parallel coordinates and slices of ``history`` (every scored trial, from
    :func:`completed_study` with ``statuses=("FINISHED", "STOPPED")``) and, when given, the fANOVA ``importances``
    from :func:`fanova_importances` (computed once for this page and the PNG). None, with the reason logged, when no
    trial was scored."""
    import optuna.visualization as vis  # plotly, one of nbtl's dependencies
    import plotly.graph_objects as go

    if not history.trials:
        logger.info("no interactive Optuna plots: no trial was scored")
        return None
    figures = [("Optimisation history (trials in the order they ended)", vis.plot_optimization_history(history))]
    if history.trials[0].params:
        figures.append(("Parallel coordinates", vis.plot_parallel_coordinate(history)))
        figures.append(("Slices", vis.plot_slice(history)))
    if importances:
        names = list(importances)[::-1]  # the most important on top, as Optuna's own importance plot
        bars = go.Bar(
            x=[importances[n] for n in names],
            y=names,
            orientation="h",
            text=[f"{importances[n]:.2f}" for n in names],
            textposition="outside",
        )
        figure = go.Figure(bars, layout={"xaxis_title": f"importance for {METRIC} (fANOVA)", "showlegend": False})
        figures.append(("Hyperparameter importances (fANOVA, trials that ran all their epochs)", figure))
    parts = [
        f"<h2>{heading}</h2>\n" + figure.to_html(full_html=False, include_plotlyjs=(i == 0))
        for i, (heading, figure) in enumerate(figures)
    ]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n<body>\n'
        f"<h1>{title}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def fanova_importances(study, seed: int = 0) -> dict[str, float] | None:
    """Optuna's fANOVA importances of the hyperparameters every trial of ``study`` (from :func:`completed_study`)
    sampled, most important first; ``None``, with the reason logged, when fewer than :data:`MIN_IMPORTANCE_TRIALS`
    trials ran all their epochs or nothing varied."""
    import optuna

    if len(study.trials) < MIN_IMPORTANCE_TRIALS:
        logger.info(
            "no parameter-importance plot: %d trial(s) ran all their epochs, fANOVA needs at least %d "
            "(trials stopped early by ASHA or the time budget, and failed ones, do not count)",
            len(study.trials),
            MIN_IMPORTANCE_TRIALS,
        )
        return None
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
        )
    except (ValueError, RuntimeError) as error:  # nothing varied, or no parameter common to all trials
        logger.info(
            "no parameter-importance plot: %s",
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )
        return None
    if not importances:
        logger.info(
            "no parameter-importance plot: no hyperparameter varied across the %d complete trials", len(study.trials)
        )
        return None
    return dict(importances)


def param_importances(study, seed: int = 0, importances: dict[str, float] | None = None):
    """Bar chart of the fANOVA importances of ``study``'s hyperparameters (``importances`` when the caller has
    them from :func:`fanova_importances` already); ``None`` where that gives none."""
    importances = importances if importances is not None else fanova_importances(study, seed)
    if importances is None:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance for best_val_accuracy (fANOVA)")
    ax.set_title(f"hyperparameter importance over {len(study.trials)} complete trials")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
