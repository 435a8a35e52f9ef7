"""Figures of a zoo study, for its MLflow parent run: accuracy per backbone and head with error bars; with
several datasets, a backbone × dataset heatmap and how well the datasets agree on the backbones' order.

Plain matplotlib (Agg); each function takes :func:`nbtl.zoo.report.summary_table`'s table and returns a
``Figure``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["accuracy_bars", "backbone_correlation", "dataset_heatmap", "best_head_accuracy"]


def accuracy_bars(summary: pd.DataFrame, metric: str = "accuracy"):
    """Grouped bars: mean ``metric`` of every backbone (groups) and head (bars), error bars ± one sd over
    folds × seeds; one panel per dataset."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    heads = list(dict.fromkeys(summary["head"]))
    fig, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(max(5.0, 2.2 * summary["backbone"].nunique() + 2) * len(datasets) ** 0.5 + 1, 4.5),
        squeeze=False,
    )
    width = 0.8 / max(1, len(heads))
    for ax, dataset in zip(axes[0], datasets):
        rows = summary[summary["dataset"] == dataset]
        backbones = list(dict.fromkeys(rows["backbone"]))
        x = np.arange(len(backbones))
        for i, head in enumerate(heads):
            cells = rows[rows["head"] == head].set_index("backbone").reindex(backbones)
            ax.bar(
                x + (i - (len(heads) - 1) / 2) * width,
                cells[f"{metric}_mean"],
                width,
                yerr=cells[f"{metric}_sd"].fillna(0.0),
                capsize=3,
                label=head,
            )
        ax.set_xticks(x, backbones, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} (mean ± sd over folds)")
        ax.set_title(dataset)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(title="head", fontsize=8)
    fig.tight_layout()
    return fig


def best_head_accuracy(summary: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Backbone × dataset: the mean ``metric`` of each backbone's best head on each dataset."""
    best = summary.groupby(["backbone", "dataset"], sort=False)[f"{metric}_mean"].max().unstack("dataset")
    return best.reindex(index=list(dict.fromkeys(summary["backbone"])), columns=list(dict.fromkeys(summary["dataset"])))


def dataset_heatmap(summary: pd.DataFrame, metric: str = "accuracy"):
    """Heatmap of :func:`best_head_accuracy`, every cell annotated."""
    table = best_head_accuracy(summary, metric)
    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 3, 0.5 * table.shape[0] + 2))
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=20, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    values = table.to_numpy(dtype=float)
    middle = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < middle else "k")
    fig.colorbar(image, ax=ax, label=f"{metric}, best head")
    ax.set_title(f"{metric} of every backbone on every dataset")
    fig.tight_layout()
    return fig


def backbone_correlation(summary: pd.DataFrame, metric: str = "accuracy"):
    """Dataset × dataset Spearman correlation of the backbones' accuracies (best head): do the datasets
    rank the backbones alike? Returns ``(figure, correlation table)``."""
    table = best_head_accuracy(summary, metric)
    correlation = table.corr(method="spearman")
    fig, ax = plt.subplots(figsize=(1.4 * len(correlation) + 3, 1.2 * len(correlation) + 2))
    image = ax.imshow(correlation.to_numpy(dtype=float), cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(correlation)), correlation.columns, rotation=20, ha="right")
    ax.set_yticks(range(len(correlation)), correlation.index)
    for (i, j), value in np.ndenumerate(correlation.to_numpy(dtype=float)):
        ax.text(j, i, "-" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center")
    fig.colorbar(image, ax=ax, label="Spearman correlation")
    ax.set_title(f"do the datasets rank the {len(table)} backbones alike?")
    fig.tight_layout()
    return fig, correlation
