"""Fit measures: how well frozen features (or a source head's predictions) fit target labels.

Each measure is a function ``measure(features, labels) -> float`` (higher is better), in the
spirit of scikit-learn's metrics: inputs are validated once, here, and any hashable labels work
(classes are numbered in sorted order of their values).

=================================  ===================  ========================================
function                           reads                source
=================================  ===================  ========================================
:func:`logme`                      features (N, D)      You et al., ICML 2021
:func:`h_score`                    features (N, D)      Bao et al., ICIP 2019
:func:`knn_accuracy`               features (N, D)      k-nearest neighbours, cross-validated
:func:`linear_probe_accuracy`      features (N, D)      logistic regression, cross-validated
:func:`leep`                       source probs (N, Z)  Nguyen et al., ICML 2020
:func:`nce`                        source probs (N, Z)  Tran et al., ICCV 2019
=================================  ===================  ========================================

Weighted Kendall τ with fine-tuned accuracy over 10 ImageNet models (TLlib's benchmark): H-score
.67, LogME .67, NCE .50, LEEP .29; LogME has the best worst case.
"""

from __future__ import annotations

import numpy as np

from nbtl.fit._crossval import cross_validated_accuracy
from nbtl.fit._validation import (
    MeasureError,
    check_int,
    check_labels,
    check_matrix,
    check_probabilities,
)

__all__ = ["h_score", "knn_accuracy", "leep", "linear_probe_accuracy", "logme", "nce"]

# Alpha and beta are kept inside [_TINY, _HUGE] so that a degenerate class (labels orthogonal to
# every feature) drives its prior precision to "very large" instead of to inf / nan.
_TINY, _HUGE = 1e-200, 1e200


def _one_hot(codes: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[codes]


# --------------------------------------------------------------------------------------- LogME
def logme(features, labels, *, max_iter: int = 100, tol: float = 1e-7) -> float:
    """LogME: the maximum log evidence of a Bayesian linear model on the features, per sample.

    For every class ``c`` the one-hot target ``y_c`` (1 for the class, 0 otherwise) is modelled
    as ``y_c = F w + noise`` with prior ``w ~ N(0, α⁻¹ I)`` and noise ``N(0, β⁻¹ I)``. The
    evidence ``p(y_c | F, α, β)`` is maximised over ``(α, β)`` by the fixed-point iteration of
    You et al. after one eigendecomposition of the smaller Gram matrix
    (``FᵀF`` or ``FFᵀ``, i.e. an SVD of ``F``): with ``t = α/β`` and ``σᵢ²`` the squared
    singular values, ``γ = Σ σᵢ²/(σᵢ² + t)``, ``α ← γ / ‖m‖²``, ``β ← (N − γ) / ‖y − F m‖²``.
    The score is the maximum log evidence divided by N, averaged over classes.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Frozen features ``F`` (e.g. one block's pooled output). Used as given: no centring or
        scaling, as in the paper.
    labels : array-like of shape (n_samples,)
        Class of each sample (any hashable values; at least 2 classes).
    max_iter : int, default=100
        Most fixed-point iterations per class (the paper's code stops after 11).
    tol : float, default=1e-7
        Stop when ``t = α/β`` changes by less than this fraction for every class.

    Returns
    -------
    float
        Average over classes of ``max_{α,β} log p(y_c | F, α, β) / N``. Higher is better; it is
        not bounded to ``[0, 1]`` and depends on N, so compare backbones on the same data.

    Raises
    ------
    MeasureError (a ValueError)
        If the features are not a finite 2-D array, or the labels do not match them.

    References
    ----------
    .. [1] You, K., Liu, Y., Wang, J. and Long, M., "LogME: Practical Assessment of Pre-trained
           Models for Transfer Learning", ICML 2021, https://arxiv.org/abs/2102.11005
           (``F`` = features ``f``, ``y_c`` = ``y``, ``α``, ``β``, ``m`` = posterior mean of ``w``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 50)
    >>> features = rng.normal(size=(100, 8)) + 3 * labels[:, None]
    >>> logme(features, labels) > logme(features, rng.permutation(labels))
    True
    """
    matrix = check_matrix(features)
    codes, n_classes = check_labels(labels, len(matrix))
    check_int(max_iter, "max_iter", minimum=1, hint="give the most fixed-point iterations, e.g. 100")
    if not tol > 0:
        raise MeasureError(f"tol must be a positive float, got {tol!r}; e.g. tol=1e-7")
    evidences = _logme_evidences(matrix, _one_hot(codes, n_classes), max_iter, float(tol))
    return float(evidences.mean())


def _logme_evidences(f: np.ndarray, y: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Log evidence / N of each column of ``y`` (N, C), maximised over (α, β); all classes at once."""
    n, d = f.shape
    y_norm2 = (y * y).sum(axis=0)  # (C,)
    # Directions i with eigenvalue sigma_i = s_i² of FᵀF; a_i = (s_i uᵢᵀy)² = (vᵢᵀFᵀy)² per class.
    # Then ‖m‖² = Σ a/(σ+t)² and ‖y − Fm‖² = ‖y‖² − Σ a(σ+2t)/(σ+t)² (no division by σ).
    # Directions with σ at rounding level are the null space of F: they carry no weight and
    # (exactly) no signal, so they are dropped; log(1 + σ/t) = 0 for them in the evidence.
    if n > d:
        sigma, v = np.linalg.eigh(f.T @ f)  # D directions
        kept = sigma > max(n, d) * np.finfo(float).eps * max(sigma.max(), 0.0)
        sigma, v = sigma[kept, None], v[:, kept]
        a = (v.T @ (f.T @ y)) ** 2  # (k, C)
        outside = None
    else:
        sigma, u = np.linalg.eigh(f @ f.T)  # N directions
        kept = sigma > max(n, d) * np.finfo(float).eps * max(sigma.max(), 0.0)
        sigma, u = sigma[kept, None], u[:, kept]
        x2 = (u.T @ y) ** 2  # (k, C)
        a = sigma * x2
        outside = np.clip(y_norm2 - x2.sum(axis=0), 0.0, None)  # ‖y‖² outside the span of F

    def moments(t):
        denom = sigma + t
        gamma = (sigma / denom).sum(axis=0)
        m2 = (a / denom / denom).sum(axis=0)  # not denom**2: t may be huge (no prior)
        if outside is None:
            res2 = y_norm2 - (a * ((sigma + 2 * t) / denom) / denom).sum(axis=0)
        else:  # the same quantity written without cancellation: Σ x² t²/(σ+t)² + outside
            res2 = (x2 * (t / denom) ** 2).sum(axis=0) + outside
        return gamma, m2, np.clip(res2, _TINY, None)

    alpha = np.ones(y.shape[1])
    beta = np.ones(y.shape[1])
    for _ in range(max_iter):
        t = alpha / beta
        gamma, m2, res2 = moments(t)
        alpha = np.clip(gamma / np.clip(m2, _TINY, None), _TINY, _HUGE)
        beta = np.clip((n - gamma) / res2, _TINY, _HUGE)
        if np.all(np.abs(alpha / beta - t) <= tol * t):
            break
    t = alpha / beta
    _, m2, res2 = moments(t)
    # D/2 log α − ½ Σ_D log(α + βσ) = −½ Σ log(1 + σ/t): directions with σ = 0 (D > N) add nothing.
    evidence = (
        n / 2 * np.log(beta)
        - 0.5 * np.log1p(sigma / t).sum(axis=0)
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * np.log(2 * np.pi)
    )
    return evidence / n


# ---------------------------------------------------------------------------- LEEP and NCE
def leep(source_probs, labels) -> float:
    """LEEP: log expected empirical prediction of the source head on the target labels.

    With ``θ(xᵢ)`` the source model's class probabilities, the empirical joint of target label
    and source label is ``P̂(y, z) = (1/N) Σ_{i: yᵢ=y} θ(xᵢ)_z``, its conditional
    ``P̂(y | z) = P̂(y, z) / P̂(z)``, and ``LEEP = (1/N) Σᵢ log Σ_z P̂(yᵢ | z) θ(xᵢ)_z``.

    Parameters
    ----------
    source_probs : array-like of shape (n_samples, n_source_classes)
        Softmax probabilities of the pre-trained (source, e.g. ImageNet) head; rows sum to 1.
    labels : array-like of shape (n_samples,)
        Target class of each sample (any hashable values; at least 2 classes).

    Returns
    -------
    float
        Average log-likelihood, ``<= 0``; higher (closer to 0) is better.

    Raises
    ------
    MeasureError (a ValueError)
        If ``source_probs`` is not a matrix of probabilities, or the labels do not match it.

    References
    ----------
    .. [1] Nguyen, C. V., Hassner, T., Seeger, M. and Archambeau, C., "LEEP: A New Measure to
           Evaluate Transferability of Learned Representations", ICML 2020,
           https://arxiv.org/abs/2002.12462 (``θ(x)`` = ``source_probs``, Eq. 1–2).
    """
    probs = check_probabilities(source_probs)
    codes, n_classes = check_labels(labels, len(probs))
    joint = _one_hot(codes, n_classes).T @ probs / len(probs)  # (C, Z)
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = (probs * conditional[codes]).sum(axis=1)  # > 0 for every sample
    return float(np.log(expected).mean())


def nce(source_probs, labels) -> float:
    """NCE: negative conditional entropy of the target labels given the source head's labels.

    Each sample gets the source label ``zᵢ = argmax θ(xᵢ)`` (its top source class); with the
    empirical joint ``P̂(y, z)`` of the pairs ``(yᵢ, zᵢ)``,
    ``NCE = −H(Y | Z) = Σ_{y,z} P̂(y, z) log P̂(y | z)``.

    Parameters
    ----------
    source_probs : array-like of shape (n_samples, n_source_classes)
        Softmax probabilities of the pre-trained (source) head; only each row's argmax is read.
    labels : array-like of shape (n_samples,)
        Target class of each sample (any hashable values; at least 2 classes).

    Returns
    -------
    float
        ``<= 0``; 0 when the source label determines the target label.

    Raises
    ------
    MeasureError (a ValueError)
        If ``source_probs`` is not a matrix of probabilities, or the labels do not match it.

    References
    ----------
    .. [1] Tran, A. T., Nguyen, C. V. and Hassner, T., "Transferability and Hardness of
           Supervised Classification Tasks", ICCV 2019, https://arxiv.org/abs/1908.08142
           (``Z`` = source labels, ``Y`` = target labels, Eq. 2 and Theorem 1).
    """
    probs = check_probabilities(source_probs)
    codes, n_classes = check_labels(labels, len(probs))
    source = probs.argmax(axis=1)
    n_source = probs.shape[1]
    joint = np.bincount(codes * n_source + source, minlength=n_classes * n_source)
    joint = joint.reshape(n_classes, n_source) / len(codes)
    marginal = joint.sum(axis=0)
    seen = joint > 0
    conditional = joint[seen] / np.broadcast_to(marginal, joint.shape)[seen]
    return float((joint[seen] * np.log(conditional)).sum())


# ------------------------------------------------------------------------------------ H-score
def h_score(features, labels, *, shrinkage="auto") -> float:
    """H-score: ``tr(cov(f)⁻¹ cov(E[f | y]))``, the features' between-class variance measured in
    units of their total covariance.

    ``cov(E[f | y])`` is the covariance of the class means, each sample standing for its class.
    The inverse is a pseudo-inverse (eigenvalues below ``max(N, D)·eps`` of the largest are
    dropped) of the covariance shrunk towards ``μ I`` (``μ`` its mean eigenvalue):
    ``(1 − s) cov(f) + s μ I``. Shrinkage keeps the score meaningful when ``D`` is close to or
    above ``N``, where the plain pseudo-inverse gives about ``C − 1`` for any labels.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Frozen features ``f``.
    labels : array-like of shape (n_samples,)
        Class of each sample (any hashable values; at least 2 classes).
    shrinkage : "auto" or float in [0, 1], default="auto"
        ``"auto"``: the Ledoit–Wolf coefficient (as Ibrahim et al. recommend for H-score);
        ``0``: Bao et al.'s original, unshrunk covariance.

    Returns
    -------
    float
        ``>= 0``, at most ``C − 1`` without shrinkage; higher is better. Invariant to scaling
        the features by a constant (and, with ``shrinkage=0``, to any invertible linear map of
        them when their covariance has full rank).

    Raises
    ------
    MeasureError (a ValueError)
        Invalid features, labels or shrinkage.

    References
    ----------
    .. [1] Bao, Y., Li, Y., Huang, S.-L., Zhang, L., Zheng, L., Zamir, A. and Guibas, L., "An
           Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019
           (Definition 2: ``H(f) = tr(cov(f(X))⁻¹ cov(E_{P_X|Y}[f(X) | Y]))``).
    .. [2] Ibrahim, S., Ponomareva, N. and Mazumder, R., "Newer is not always better: Rethinking
           transferability metrics, their peculiarities, stability and performance",
           ECML-PKDD 2022, https://arxiv.org/abs/2110.06893 (shrunk, regularised H-score).
    """
    matrix = check_matrix(features)
    codes, n_classes = check_labels(labels, len(matrix))
    if not (
        shrinkage == "auto"
        if isinstance(shrinkage, str)
        else not isinstance(shrinkage, bool) and isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1
    ):
        raise MeasureError(f"shrinkage must be 'auto' or a float in [0, 1], got {shrinkage!r}; e.g. 0.1")
    n, d = matrix.shape
    centred = matrix - matrix.mean(axis=0)
    counts = np.bincount(codes, minlength=n_classes)
    averaging = _one_hot(codes, n_classes).T / counts[:, None]  # (C, N): class means
    # One eigendecomposition of the smaller Gram matrix gives the covariance's spectrum
    # (eigenvalues w / n) and the class means' coordinates in its eigenbasis; both the
    # covariance and the class means live in the row space of the centred features.
    if n > d:
        w, vectors = np.linalg.eigh(centred.T @ centred)
        coordinates = (averaging @ centred) @ vectors  # (C, D)
    else:
        w, u = np.linalg.eigh(centred @ centred.T)
        coordinates = (averaging @ u) * np.sqrt(np.clip(w, 0.0, None))  # (C, N)
    w = np.clip(w, 0.0, None)
    keep = w > max(n, d) * np.finfo(float).eps * w.max()
    if not keep.any():
        return 0.0  # constant features carry no between-class variance
    mean_eigenvalue = (centred**2).sum() / (n * d)
    if shrinkage == "auto":
        shrinkage = _ledoit_wolf_shrinkage(centred, w)
    eigenvalues = (1 - shrinkage) * w[keep] / n + shrinkage * mean_eigenvalue
    return float((counts / n) @ (coordinates[:, keep] ** 2 / eigenvalues).sum(axis=1))


def _ledoit_wolf_shrinkage(centred: np.ndarray, gram_eigenvalues: np.ndarray) -> float:
    """scikit-learn's ``ledoit_wolf_shrinkage`` (Ledoit & Wolf 2004), from the Gram spectrum:
    ``‖XᵀX‖_F² = Σ w²`` and ``sum(X²ᵀX²) = Σᵢ (Σⱼ xᵢⱼ²)²`` need no D x D matrix."""
    n, d = centred.shape
    if d == 1:
        return 0.0
    row_norms2 = (centred**2).sum(axis=1)
    trace = row_norms2.sum() / n
    mu = trace / d
    delta_ = (gram_eigenvalues**2).sum() / n**2
    beta = ((row_norms2**2).sum() / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


# ------------------------------------------------------------- cross-validated accuracies
def knn_accuracy(features, labels, *, k: int = 5, cv: int = 5, metric: str = "cosine", random_state: int = 0) -> float:
    """Cross-validated accuracy of a k-nearest-neighbour classifier on the features.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Frozen features.
    labels : array-like of shape (n_samples,)
        Class of each sample (any hashable values; at least 2 classes, ``cv`` samples each).
    k : int, default=5
        Neighbours that vote (uniform weights).
    cv : int, default=5
        Stratified folds; every sample is predicted once, by the fold that held it out.
    metric : str, default="cosine"
        Any metric of :class:`sklearn.neighbors.KNeighborsClassifier`; cosine suits pooled
        post-activation features (as the k-NN evaluation of DINO, Caron et al. 2021).
    random_state : int, default=0
        Seeds the fold assignment.

    Returns
    -------
    float
        Fraction of samples whose held-out prediction is right, in ``[0, 1]``.

    Notes
    -----
    Folds are drawn from a seeded shuffle of a canonical order of the samples (by label, then
    by projection on a seeded random direction), so the result does not depend on the order of
    the samples, nor change when the features are multiplied by a positive constant.

    Raises
    ------
    MeasureError (a ValueError)
        Invalid inputs, a class with fewer than ``cv`` samples, or ``k`` above a training fold's size.
    """
    from sklearn.neighbors import KNeighborsClassifier

    matrix = check_matrix(features)
    codes, n_classes = check_labels(labels, len(matrix))
    k = check_int(k, "k", minimum=1, hint="give the number of neighbours, e.g. k=5")

    def make():
        return KNeighborsClassifier(n_neighbors=k, metric=metric)

    return cross_validated_accuracy(make, matrix, codes, n_classes, cv, random_state, k=k)


def linear_probe_accuracy(
    features, labels, *, cv: int = 5, C: float = 1.0, max_iter: int = 1000, random_state: int = 0
) -> float:
    """Cross-validated accuracy of a logistic-regression probe on standardised features.

    A scikit-learn pipeline ``StandardScaler() → LogisticRegression(C=C)`` (multinomial,
    L-BFGS) is fitted on each training fold and scored on the held-out one: the accuracy of a
    new linear head on the frozen features, the "linear probing" baseline of fine-tuning.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Frozen features.
    labels : array-like of shape (n_samples,)
        Class of each sample (any hashable values; at least 2 classes, ``cv`` samples each).
    cv : int, default=5
        Stratified folds; every sample is predicted once, by the fold that held it out.
    C : float, default=1.0
        Inverse L2 regularisation strength of the logistic regression.
    max_iter : int, default=1000
        L-BFGS iterations; an unconverged probe is still scored (convergence warnings are muted).
    random_state : int, default=0
        Seeds the fold assignment (and the solver).

    Returns
    -------
    float
        Fraction of samples whose held-out prediction is right, in ``[0, 1]``.

    Notes
    -----
    Folds are drawn from a seeded shuffle of a canonical order of the samples (by label, then
    by projection on a seeded random direction), so the result does not depend on the order of
    the samples, nor change when the features are multiplied by a positive constant.

    Raises
    ------
    MeasureError (a ValueError)
        Invalid inputs or a class with fewer than ``cv`` samples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    matrix = check_matrix(features)
    codes, n_classes = check_labels(labels, len(matrix))
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not C > 0:
        raise MeasureError(f"C must be a positive float, got {C!r}; e.g. C=1.0")
    max_iter = check_int(max_iter, "max_iter", minimum=1, hint="e.g. max_iter=1000")

    def make():
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=random_state))

    return cross_validated_accuracy(make, matrix, codes, n_classes, cv, random_state)
