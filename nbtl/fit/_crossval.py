"""Cross-validated accuracy whose folds depend on the samples' content, not their order."""

from __future__ import annotations

import warnings

import numpy as np

from nbtl.fit._validation import MeasureError, check_folds, check_int


def _content_order(matrix: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random order of the samples that depends on their content, not their positions.

    Samples are first sorted by label and by their projection on a seeded random direction (a
    canonical order: the same for any permutation of the rows, and for features rescaled by a
    positive constant), then that order is shuffled by a seeded permutation.
    """
    rng = np.random.default_rng(seed)
    projection = (matrix * rng.normal(size=matrix.shape[1])).sum(axis=1)  # row by row: same bits wherever the row sits
    canonical = np.lexsort((projection, codes))
    return canonical[rng.permutation(len(codes))]


def cross_validated_accuracy(make_estimator, matrix, codes, n_classes, cv, random_state, k=None) -> float:
    """Fraction of samples predicted right by an estimator fitted on the other folds.

    ``make_estimator()`` returns a fresh scikit-learn classifier; ``matrix`` (N, D) and
    ``codes`` (N,) are validated. Samples are put in a seeded content order (:func:`_content_order`)
    before ``StratifiedKFold`` splits them, so permuting the samples changes nothing. ``k``, if
    given, is checked against the smallest training fold (k-nearest neighbours).
    """
    from sklearn.model_selection import StratifiedKFold

    cv = check_int(cv, "cv", minimum=2, hint="give the number of folds, e.g. cv=5")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise MeasureError(f"random_state must be an integer seed, got {random_state!r}; e.g. random_state=0")
    check_folds(codes, n_classes, cv)
    order = _content_order(matrix, codes, int(random_state))
    matrix, codes = matrix[order], codes[order]
    # The content order is already a seeded shuffle; StratifiedKFold only stratifies it.
    folds = list(StratifiedKFold(n_splits=cv).split(matrix, codes))
    smallest_train = min(len(train) for train, _ in folds)
    if k is not None and k > smallest_train:
        raise MeasureError(f"k={k} exceeds the {smallest_train} samples of a training fold; lower k or cv")
    correct = 0
    from threadpoolctl import threadpool_limits

    # Small folds: one BLAS thread is faster, and oversubscribed threads (Ray trials, a busy machine)
    # make L-BFGS tens of times slower.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in folds:
            estimator = make_estimator().fit(matrix[train], codes[train])
            correct += int((estimator.predict(matrix[test]) == codes[test]).sum())
    return correct / len(codes)
