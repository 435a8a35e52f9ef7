"""Signals: the few numbers the rules and the learned recommender read, from a fit table and a
dataset's meta-features.

A fit table (:func:`nbtl.fit.fit_table`) has one row per block; a *fit curve* is one measure over
the blocks. Signals summarise it per backbone (where it peaks, how high) and add what the dataset
itself says (images per class, classes, grayscale, how small the source images are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from nbtl.errors import NbtlError
from nbtl.fit.registry import feature_measures, source_measures

__all__ = [
    "DATASET_SIGNALS",
    "HeuristicsError",
    "backbone_signal_names",
    "backbone_signals",
    "dataset_signals",
    "rank_backbones",
]

#: Dataset-level signals, from :func:`nbtl.fit.meta_features`.
DATASET_SIGNALS = ("images_per_class", "n_classes", "n_images", "grayscale", "original_side", "image_size")


def backbone_signal_names() -> tuple[str, ...]:
    """Backbone-level signals, from that backbone's fit table: its shape (``num_blocks``, ``fit_peak_block``,
    ``fit_peak_fraction``), each registered fit measure's (:mod:`nbtl.fit.registry`: ``<signal>_best`` and
    ``<signal>_last`` of a block measure, ``<signal>`` of a source measure), and ``source_gap``."""
    measured = [name for entry in (*feature_measures(), *source_measures()) for name in entry.signals()]
    return ("num_blocks", "fit_peak_block", "fit_peak_fraction", *measured, "source_gap")


class HeuristicsError(NbtlError):
    """Bad rules, meta-data or recommender files, or inputs the heuristics cannot read."""


def dataset_signals(meta: Mapping[str, Any]) -> dict[str, float]:
    """Dataset signals from :func:`nbtl.fit.meta_features`.

    ``images_per_class`` is the mean over classes, ``original_side`` the smaller median side of the
    source images before resizing, ``grayscale`` 1.0 or 0.0.
    """
    try:
        return {
            "images_per_class": float(meta["images_per_class_mean"]),
            "n_classes": float(meta["n_classes"]),
            "n_images": float(meta["n_images"]),
            "grayscale": float(bool(meta["grayscale"])),
            "original_side": float(min(meta["original_height"], meta["original_width"])),
            "image_size": float(meta["image_size"]),
        }
    except KeyError as error:
        raise HeuristicsError(
            f"dataset meta-features lack {error.args[0]!r}; compute them with nbtl.fit.meta_features(dataset)"
        ) from None


def _curve(table, column: str) -> np.ndarray:
    values = table[column].to_numpy(dtype=float) if column in table else np.full(len(table), np.nan)
    return values


def backbone_signals(table, fit_curve: str = "logme", tolerance: float = 0.0) -> dict[str, float]:
    """Signals of one backbone's fit table (one row per block, in block order).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of one backbone from :func:`nbtl.fit.fit_table`.
    fit_curve : str, default="logme"
        The column whose peak over blocks gives ``fit_peak_block``.
    tolerance : float, default=0.0
        The peak is the *first* block whose value is within ``tolerance × (max − min)`` of the
        maximum, so a curve that flattens out does not push the peak to the last block.

    Returns
    -------
    dict
        :func:`backbone_signal_names`: ``num_blocks``; ``fit_peak_block`` (0-based) and ``fit_peak_fraction``
        (``(peak + 1) / num_blocks``); for each registered block measure ``<signal>_best`` / ``<signal>_last``
        (``logme_*``, ``h_score_*``, ``knn_*``, ``probe_*`` for linear-probe accuracy, NaN when the table lacks
        its column), for each source measure its value (``leep``, ``nce``; NaN without a source head);
        ``source_gap`` = ``1 − probe_best`` (how far the data is from what the features already separate).
    """
    if len(table) == 0:
        raise HeuristicsError("a fit table has no rows; compute it with nbtl.fit.fit_table")
    table = table.sort_values("block")
    curve = _curve(table, fit_curve)
    if not np.isfinite(curve).any():
        raise HeuristicsError(
            f"the fit table has no finite {fit_curve!r} on any block; "
            "choose another fit_curve measure or more images per class"
        )
    finite = np.where(np.isfinite(curve), curve, -np.inf)
    top, bottom = float(finite.max()), float(np.nanmin(curve))
    peak = int(np.flatnonzero(finite >= top - tolerance * (top - bottom))[0])

    def best(values: np.ndarray) -> float:
        return float(np.nanmax(values)) if np.isfinite(values).any() else math.nan

    num_blocks = len(table)
    signals = {
        "num_blocks": float(num_blocks),
        "fit_peak_block": float(peak),
        "fit_peak_fraction": (peak + 1) / num_blocks,
    }
    for entry in feature_measures():
        values = _curve(table, entry.name)
        signals[f"{entry.signal}_best"], signals[f"{entry.signal}_last"] = best(values), float(values[-1])
    for entry in source_measures():
        signals[entry.signal] = float(table[entry.name].iloc[0]) if entry.name in table else math.nan
    probe_best = signals["probe_best"]
    signals["source_gap"] = 1.0 - probe_best if math.isfinite(probe_best) else math.nan
    return signals


def rank_backbones(signals_by_backbone: Mapping[str, Mapping[str, float]], by: str = "logme_best") -> list[str]:
    """Backbone names, best first, by the signal ``by`` (NaN last); ties keep the given order."""

    def key(item):
        value = item[1].get(by, math.nan)
        return (0, -value) if value is not None and math.isfinite(value) else (1, 0.0)

    return [name for name, _ in sorted(signals_by_backbone.items(), key=key)]
