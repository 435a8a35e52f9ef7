"""The linear probe as the field measures it: multinomial logistic regression on frozen features, L-BFGS,
its L2 strength chosen by cross-validation on the training split; and the calibration it is judged by.

A probe trained by SGD at a fixed learning rate for a fixed number of steps is not a floor: on small data its
logits run into the hundreds (a probe at 0.76 validation accuracy had a validation loss of 32), which spoils
every tie broken by loss, the probabilities of the model handed over and any ensemble that averages them.
CLIP's evaluations (Radford et al. 2021) fit the probe with L-BFGS and sweep the L2 strength on held-out
training data; :func:`fit_linear_probe` does the same with scikit-learn's ``LogisticRegression``, choosing
the strength by cross-validated log loss (so the chosen probe is the best-calibrated of the sweep), and
returns weights ready for a ``torch.nn.Linear``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["LinearProbe", "PROBE_CS", "expected_calibration_error", "fit_linear_probe"]

logger = logging.getLogger(__name__)

#: Inverse L2 strengths swept: 1e-4 .. 100, two a decade (the pooled features' scale: O(1) per channel).
PROBE_CS = np.logspace(-4, 2, 13)
#: Folds of the sweep (fewer when the smallest class has fewer images).
PROBE_FOLDS = 5
#: The sweep stops this many Cs past its lowest cross-validated log loss when all of them scored higher.
PROBE_PATIENCE = 3
#: The logit given to a class the training split lacks (it can then never be predicted).
_ABSENT_LOGIT = -30.0


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: ``logits = features @ weight.T + bias``.

    Attributes
    ----------
    weight : ndarray of shape (n_classes, n_features)
    bias : ndarray of shape (n_classes,)
    C : float
        The chosen inverse L2 strength.
    cv_log_loss : float
        Its cross-validated log loss (NaN when no sweep could be run).
    folds : int
        Folds of the sweep (0: too few images per class, ``C = 1`` was used without one).
    """

    weight: np.ndarray
    bias: np.ndarray
    C: float
    cv_log_loss: float
    folds: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias


def fit_linear_probe(
    features,
    labels,
    n_classes: int,
    *,
    Cs=PROBE_CS,
    folds: int = PROBE_FOLDS,
    max_iter: int = 1000,
    random_state: int = 0,
    patience: int = PROBE_PATIENCE,
) -> LinearProbe:
    """Fit a multinomial logistic regression on ``features``, its L2 strength chosen by stratified
    cross-validation of the log loss.

    The features are not standardised: on pooled EfficientNet-Lite0 features of small tasks (digits, emoji,
    icons at 30-40 images a class, 2 seeds each) standardising lowered the mean test accuracy from 0.651 to
    0.593, since it lifts the many near-silent channels to the weight of the informative ones.

    The sweep runs on the features' principal coordinates (``Z = U S Vᵀ``, fitted on ``U S``): an L2-penalised
    linear model's weights lie in the span of its training samples (the representer theorem), so this is
    exact, and with fewer images than feature dimensions (the usual case here) it is several times faster.
    Each fold walks the ``Cs`` from the strongest penalty up, warm-started from the last fit, and the walk stops
    ``patience`` Cs past the lowest mean held-out log loss when all of them scored higher (weaker penalties then
    only overfit more, and they are the slowest fits).

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Frozen (pooled) features of the training split.
    labels : array-like of int of shape (n_samples,)
        Classes in ``0 .. n_classes - 1``.
    n_classes : int
        Number of classes of the task; a class absent from ``labels`` gets a logit of -30.
    Cs : array-like of float, default=PROBE_CS
        Inverse L2 strengths to sweep (scikit-learn's ``C``).
    folds : int, default=5
        Stratified cross-validation folds, lowered to the smallest class's size; below 2 no sweep is run
        and ``C = 1``.
    max_iter : int, default=1000
        L-BFGS iterations per fit (an unconverged fit is still used).
    random_state : int, default=0
        Seeds the folds.
    patience : int, default=PROBE_PATIENCE
        Cs past the lowest cross-validated loss, all higher, after which the sweep stops (``len(Cs)``: never).

    Returns
    -------
    LinearProbe
        ``weight`` (n_classes, n_features) and ``bias`` (n_classes,) such that ``features @ weight.T + bias``
        are the probe's logits.

    References
    ----------
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
    (linear-probe protocol: L-BFGS logistic regression, L2 strength swept on held-out training data).
    Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
    ICLR 2022 (the probe as the first stage of LP-FT and as the floor of fine-tuning).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    rank = max(1, int((s > s[0] * 1e-10).sum())) if len(s) and s[0] > 0 else 1
    z, basis = u[:, :rank] * s[:rank], vt[:rank]  # (n, r) coordinates, (r, d) directions
    present, counts = np.unique(y, return_counts=True)
    k = min(int(folds), int(counts.min()))
    Cs = np.sort(np.asarray(Cs, dtype=np.float64))
    C, loss = 1.0, float("nan")
    # One BLAS thread: these matrices are small, and threads that outnumber the free cores (a busy machine, two
    # trials per CPU pair) made the sweep several times slower (nbtl.fit._crossval does the same).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(present) >= 2 and k >= 2:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state % 2**32)
            parts = list(splitter.split(z, y))
            models = [LogisticRegression(C=Cs[0], max_iter=max_iter, warm_start=True) for _ in parts]
            means: list[float] = []
            for c in Cs:  # one model per fold walks the Cs upwards, warm-started from its last fit
                losses = []
                for model, (train, held_out) in zip(models, parts):
                    model.set_params(C=c).fit(z[train], y[train])
                    losses.append(log_loss(y[held_out], model.predict_proba(z[held_out]), labels=present))
                means.append(float(np.mean(losses)))
                if len(means) - 1 - int(np.argmin(means)) >= patience:
                    break  # `patience` Cs past the lowest loss, all higher: weaker penalties only overfit more
            best = int(np.argmin(means))
            C, loss = float(Cs[best]), means[best]
        if len(present) >= 2:
            model = LogisticRegression(C=C, max_iter=max_iter).fit(z, y)
            coef, intercept = model.coef_ @ basis, model.intercept_
        else:
            coef, intercept = np.zeros((1, x.shape[1])), np.zeros(1)
    if len(present) == 2 and coef.shape[0] == 1:  # scikit-learn's binary form: p(1) = sigmoid(w z + b)
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.full(n_classes, _ABSENT_LOGIT)
    weight[present], bias[present] = coef, intercept
    logger.debug("linear probe: C=%.3g chosen over %d folds (cv log loss %.4f)", C, k, loss)
    return LinearProbe(weight, bias, C, loss, k if k >= 2 and len(present) >= 2 else 0)


def expected_calibration_error(probabilities, labels, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence: ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``
    over ``bins`` equal-width confidence bins (Guo et al., "On Calibration of Modern Neural Networks",
    ICML 2017).

    Parameters
    ----------
    probabilities : array-like of shape (n_samples, n_classes)
    labels : array-like of int of shape (n_samples,)
    bins : int, default=15

    Returns
    -------
    float
        In ``[0, 1]``; 0 for a perfectly calibrated classifier (NaN for no samples).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if len(y) == 0 or not np.isfinite(p).all():
        return float("nan")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(y))
