"""Input checks for the fit measures, done once at the public boundary (scikit-learn style).

Every message has one shape: which parameter, what it must be, what it got, how to fix it.
Private helpers in :mod:`nbtl.fit.measures` assume inputs that passed these checks.
"""

from __future__ import annotations

import numbers

import numpy as np

from nbtl.errors import NbtlError


class MeasureError(NbtlError, ValueError):
    """Invalid input to a fit measure: a ``ValueError`` (scikit-learn convention) that the CLI
    also prints as one line, like every other :class:`~nbtl.errors.NbtlError`."""


def _as_numpy(values):
    if hasattr(values, "detach"):  # a torch tensor; no torch import needed here
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def check_matrix(values, name: str = "features", *, min_rows: int = 2) -> np.ndarray:
    """``values`` as a finite float64 array of shape (N, D), N >= ``min_rows``, D >= 1."""
    array = _as_numpy(values)
    if array.ndim != 2:
        raise MeasureError(
            f"{name} must be a 2-D array of shape (n_samples, n_features), got shape {array.shape}; "
            f"reshape it (e.g. {name}.reshape(len({name}), -1)) or pool feature maps first"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise MeasureError(f"{name} must hold real numbers, got dtype {array.dtype}; pass a float array")
    array = array.astype(np.float64, copy=False)
    if array.shape[0] < min_rows or array.shape[1] < 1:
        raise MeasureError(
            f"{name} must have at least {min_rows} samples and 1 feature, got shape {array.shape}; pass more samples"
        )
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise MeasureError(f"{name} must be finite, got {bad} NaN or infinite values; remove or impute those samples")
    return array


def check_labels(labels, n_samples: int, name: str = "labels") -> tuple[np.ndarray, int]:
    """Encode ``labels`` (any hashable values) as ``0..C-1``; return ``(codes, C)`` with C >= 2.

    Classes are numbered in sorted order of their values, so the measures never depend on
    which value names which class.
    """
    array = _as_numpy(labels)
    if array.ndim != 1:
        raise MeasureError(
            f"{name} must be a 1-D array of shape (n_samples,), got shape {array.shape}; "
            f"pass one class label per sample (e.g. {name}.ravel())"
        )
    if len(array) != n_samples:
        raise MeasureError(
            f"{name} has {len(array)} entries but there are {n_samples} samples; pass one label per sample"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise MeasureError(f"{name} must not contain NaN or infinity; drop the unlabelled samples")
    classes, codes = np.unique(array, return_inverse=True)
    if len(classes) < 2:
        raise MeasureError(
            f"{name} must contain at least 2 classes, got {len(classes)}; a fit measure compares classes"
        )
    return codes.reshape(-1).astype(np.int64), len(classes)


def check_probabilities(values, name: str = "source_probs", *, atol: float = 1e-3) -> np.ndarray:
    """``values`` as float64 (N, Z) rows of probabilities: non-negative, each row summing to 1."""
    array = check_matrix(values, name)
    if array.min() < 0:
        raise MeasureError(
            f"{name} must be probabilities (>= 0), got a minimum of {array.min():.3g}; "
            "pass softmax(logits), not the logits"
        )
    sums = array.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=atol):
        raise MeasureError(
            f"every row of {name} must sum to 1, got row sums from {sums.min():.4g} to {sums.max():.4g}; "
            "pass softmax(logits) over all source classes"
        )
    return array


def check_int(value, name: str, *, minimum: int, hint: str) -> int:
    """``value`` as an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise MeasureError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")
    return int(value)


def check_folds(codes: np.ndarray, n_classes: int, cv: int) -> None:
    """Stratified ``cv``-fold cross-validation needs ``cv`` samples in every class."""
    smallest = int(np.bincount(codes, minlength=n_classes).min())
    if smallest < cv:
        raise MeasureError(
            f"cv={cv} needs at least {cv} samples in every class, but the smallest class has "
            f"{smallest}; lower cv (at least 2) or add samples to that class"
        )
