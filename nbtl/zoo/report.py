"""The numbers of a zoo study: per-fold metrics, per-cell mean ± sd, and the paired comparison of heads.

A *cell* is one dataset × backbone × head; its *folds* are the ``folds × seeds`` held-out estimates.
Plain NumPy, SciPy, pandas and scikit-learn: no Ray, no MLflow.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = [
    "CELL",
    "METRICS",
    "classification_metrics",
    "display_table",
    "paired_comparison",
    "summary_table",
]

#: The metrics of every fold, as Puls et al. report them (accuracy, macro and weighted F1) plus the
#: precision and recall they are made of.
METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)
#: The columns that name a cell.
CELL = ["dataset", "backbone", "head"]
#: What pairs two heads' folds: the same images trained and held out.
PAIR = ["dataset", "backbone", "seed", "fold"]


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Accuracy, and macro- and weighted-averaged precision, recall and F1 of one fold's predictions
    (:func:`sklearn.metrics.precision_recall_fscore_support`; a class never predicted scores 0)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    metrics = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        metrics.update(
            {f"precision_{average}": float(precision), f"recall_{average}": float(recall), f"f1_{average}": float(f1)}
        )
    return metrics


def summary_table(folds: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """One row per cell (:data:`CELL`): ``n`` (folds × seeds measured), and ``<metric>_mean`` and
    ``<metric>_sd`` (sample standard deviation, ``ddof=1``; NaN for one fold) of every metric; cells in
    the order they first appear in ``folds``, which holds one row per fold with the :data:`CELL` columns
    and the metrics."""
    rows = []
    for key, group in folds.groupby(CELL, sort=False):
        row = dict(zip(CELL, key))
        row["n"] = int(group[metrics[0]].notna().sum())
        for metric in metrics:
            values = group[metric].dropna()
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    columns = [*CELL, "n", *(f"{m}_{s}" for m in metrics for s in ("mean", "sd"))]
    return pd.DataFrame(rows, columns=columns)


def paired_comparison(
    folds: pd.DataFrame, baseline: str = "linear", metric: str = "accuracy", confidence: float = 0.95
) -> pd.DataFrame:
    """Every other head against ``baseline``, per dataset and backbone, on the folds both measured.

    For each pair of folds with the same images (:data:`PAIR`) the difference ``other − baseline`` of
    ``metric``; per dataset × backbone × head: ``n`` pairs, ``mean_diff``, ``sd_diff``, the two-sided
    ``confidence`` t-interval of the mean difference (``mean ± t_{n-1} · sd / √n``, :mod:`scipy.stats`;
    NaN below 2 pairs), and ``wins`` / ``losses`` / ``ties`` of ``other`` over ``baseline``.
    The interval treats the ``folds × seeds`` differences as independent, which overlapping training
    folds are not (Nadeau & Bengio 2003): read it as a guide, not a test.
    """
    from scipy import stats

    columns = [
        "dataset",
        "backbone",
        "head",
        "baseline",
        "metric",
        "n",
        "mean_diff",
        "sd_diff",
        "ci_low",
        "ci_high",
        "wins",
        "losses",
        "ties",
    ]
    base = folds[folds["head"] == baseline].set_index(PAIR)[metric]
    rows = []
    for (dataset, backbone, head), group in folds[folds["head"] != baseline].groupby(CELL, sort=False):
        other = group.set_index(PAIR)[metric]
        both = pd.concat([other.rename("other"), base.rename("base")], axis=1, join="inner").dropna()
        diff = (both["other"] - both["base"]).to_numpy(dtype=float)
        n = len(diff)
        mean = float(diff.mean()) if n else math.nan
        sd = float(diff.std(ddof=1)) if n > 1 else math.nan
        if n > 1:
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
            low, high = mean - half, mean + half
        else:
            low = high = math.nan
        rows.append(
            {
                "dataset": dataset,
                "backbone": backbone,
                "head": head,
                "baseline": baseline,
                "metric": metric,
                "n": n,
                "mean_diff": mean,
                "sd_diff": sd,
                "ci_low": low,
                "ci_high": high,
                "wins": int((diff > 0).sum()),
                "losses": int((diff < 0).sum()),
                "ties": int((diff == 0).sum()),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def display_table(summary: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """``summary`` for the terminal: every metric as one ``mean ± sd`` column (3 decimals)."""

    def show(mean: float, sd: float) -> str:
        if math.isnan(mean):
            return "-"
        return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"

    shown = summary[[*CELL, "n"]].copy()
    for metric in metrics:
        shown[metric] = [show(m, s) for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_sd"])]
    if shown["dataset"].nunique() == 1:
        shown = shown.drop(columns="dataset")
    return shown
