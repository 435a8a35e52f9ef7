"""The fit table: every measure for every block of one backbone.

With a dataset's meta-features (:func:`nbtl.fit.features.meta_features`, on the torch side of this room)
these are what :mod:`nbtl.heuristics` reads to recommend a transfer config without a search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nbtl.fit._validation import MeasureError, check_labels, check_matrix
from nbtl.fit.registry import fit_measure_names, get_fit_measure

__all__ = ["fit_table"]


def fit_table(
    block_features,
    labels=None,
    *,
    measures: Sequence[str] | None = None,
    source_probs=None,
    k: int = 5,
    cv: int = 5,
    random_state: int = 0,
):
    """Every fit measure for every block: one row per block.

    Parameters
    ----------
    block_features : BlockFeatures or sequence of array-like
        From :func:`nbtl.fit.block_features`, or a list of ``(N, C_b)`` feature matrices.
    labels : array-like of shape (n_samples,), optional
        Target labels; default ``block_features.labels``.
    measures : sequence of str, optional
        Which columns to compute, of the registered fit measures (:mod:`nbtl.fit.registry`: ``"logme"``,
        ``"h_score"``, ``"knn_accuracy"``, ``"linear_probe_accuracy"``, ``"leep"``, ``"nce"`` and any
        registered since); default all of them.
    source_probs : array-like of shape (n_samples, n_source_classes), optional
        Source-head probabilities when ``block_features`` is a plain list; default
        ``block_features.source_probs``.
    k : int, default=5
        Neighbours of the measures that take ``k`` (:func:`~nbtl.fit.measures.knn_accuracy`), lowered to a
        training fold's size.
    cv : int, default=5
        Folds of the cross-validated measures (those that take ``cv``: kNN and linear-probe accuracy),
        lowered to the smallest class's size (those columns are NaN if a class has a single sample).
    random_state : int, default=0
        Seeds the folds.

    Returns
    -------
    pandas.DataFrame
        Columns ``backbone`` (when known), ``block``, ``feature_dim``, then the measures in the
        order asked. Source measures (LEEP, NCE) read the source head, not a block: their value is the
        same on every row, NaN when there are no source probabilities.
    """
    import pandas as pd

    known = fit_measure_names()
    measures = list(known if measures is None else ([measures] if isinstance(measures, str) else measures))
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise MeasureError(f"measures must be a non-empty list of {', '.join(known)}; got {measures!r}")
    entries = {name: get_fit_measure(name) for name in measures}
    blocks = getattr(block_features, "blocks", block_features)
    if isinstance(blocks, np.ndarray) or not isinstance(blocks, Sequence) or not blocks:
        raise MeasureError(
            "block_features must be a BlockFeatures or a non-empty list of (N, C_b) arrays, "
            f"got {type(block_features).__name__}; pass one feature matrix per block"
        )
    if labels is None:
        labels = getattr(block_features, "labels", None)
        if labels is None:
            raise MeasureError("labels are required when block_features is a plain list of arrays")
    if source_probs is None:
        source_probs = getattr(block_features, "source_probs", None)
    matrices = [check_matrix(block, f"block_features[{b}]") for b, block in enumerate(blocks)]
    codes, n_classes = check_labels(labels, len(matrices[0]))
    for b, matrix in enumerate(matrices[1:], start=1):
        if len(matrix) != len(codes):
            raise MeasureError(
                f"block_features[{b}] has {len(matrix)} rows but there are {len(codes)} labels; "
                "every block must hold the same samples"
            )
    counts = np.bincount(codes, minlength=n_classes)
    fold_count = min(cv, int(counts.min()))
    # A stratified training fold keeps at least n_c - ceil(n_c / cv) samples of each class c.
    smallest_train = int((counts - -(-counts // max(fold_count, 1))).sum())

    # The options each measure takes, from the table's own (cv and k fitted to the smallest class).
    options = {"cv": fold_count, "random_state": random_state, "k": min(k, smallest_train)}

    def measure(entry, matrix):
        taken = entry.options()
        if "cv" in taken and fold_count < 2:
            return float("nan")
        return float(entry.resolve()(matrix, codes, **{name: options[name] for name in taken}))

    per_backbone = {}
    for name, entry in entries.items():
        if entry.reads == "source":
            per_backbone[name] = float("nan") if source_probs is None else measure(entry, source_probs)
    rows = []
    backbone = getattr(block_features, "backbone", None)
    for b, matrix in enumerate(matrices):
        row = {"backbone": backbone} if backbone is not None else {}
        row.update(block=b, feature_dim=matrix.shape[1])
        for name in measures:
            row[name] = per_backbone[name] if name in per_backbone else measure(entries[name], matrix)
        rows.append(row)
    return pd.DataFrame(rows)
