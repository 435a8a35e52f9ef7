"""Choosing which images to keep before any of them is decoded."""

from __future__ import annotations

import numpy as np


def select_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Return sorted positions keeping at most ``per_class`` items of each label.

    Parameters
    ----------
    labels : numpy.ndarray of shape (N,)
        Integer class labels.
    per_class : int or None
        Upper bound per class; None keeps everything.
    seed : int
        Seeds the choice, so the same seed keeps the same items.

    Returns
    -------
    numpy.ndarray of shape (M,), dtype int64
        Positions into ``labels`` in increasing order, so the source order is preserved.
    """
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) > per_class:
            members = rng.choice(members, size=per_class, replace=False)
        kept.append(members)
    if not kept:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(kept)).astype(np.int64)
