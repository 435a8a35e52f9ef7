"""Stratified, seeded train / validation / test splits, and k-fold cross-validation splits.

A dataset with official parts (:attr:`ImageDataset.parts`: an ImageFolder with ``train/`` and
``test/`` sub-folders, or a separate test source) keeps them: its test images are always the test
set, its ``val/`` images (when given) the validation set, and only the training part is split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch

from nbtl.data.dataset import ImageDataset
from nbtl.errors import DataError

MIN_IMAGES_PER_CLASS = 3  # one each for train, val and test
#: ``kfold_splits``' validation share of each fold's training part when none is given.
DEFAULT_VAL_FRACTION = 0.15


@dataclass
class Splits:
    """The three disjoint parts of one dataset.

    ``indices`` maps ``"train"``, ``"val"`` and ``"test"`` to the sorted positions of each part in the
    dataset that was split (so per-image arrays of that dataset, e.g. cached features, can be indexed
    the same way); None when the parts were built by hand.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    indices: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)


def split_dataset(
    dataset: ImageDataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Splits:
    """Split a dataset into stratified train, validation and test parts.

    Each class is split on its own: its images are shuffled with ``seed`` and
    ``round(n * test_fraction)`` go to test, ``round(n * val_fraction)`` to validation and
    the rest to train, with at least one image in each part. So every class appears in
    every part and the class proportions match the dataset's up to rounding (small classes
    can give val / test a bit more than their fraction). Same seed, same split.

    Official parts (``dataset.parts``) are honoured: official test images are the test set
    (``test_fraction`` is then unused) and official val images the validation set; only what is
    not given is drawn, stratified and seeded as above, from the official training images.

    Parameters
    ----------
    dataset : ImageDataset
        The dataset to split; every class needs at least 3 images (2 in the official training
        part when the test set is given, 1 when val is given too).
    val_fraction : float, default=0.15
        Share of each class for validation, in (0, 1).
    test_fraction : float, default=0.15
        Share of each class for test, in (0, 1); ``val_fraction + test_fraction < 1``.
    seed : int, default=0
        Seeds the shuffle.

    Returns
    -------
    Splits
        ``train``, ``val`` and ``test`` subsets, each keeping the dataset's order, and their
        ``indices`` in ``dataset``.

    Raises
    ------
    DataError
        If a fraction is out of range, or a class has too few images.
    """
    return _make_splits(dataset, split_positions(dataset, val_fraction, test_fraction, seed))


def split_positions(
    dataset: ImageDataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """The positions in ``dataset`` of each part of :func:`split_dataset` (``"train"``, ``"val"``, ``"test"``),
    without copying an image: what a data file is written from, a chunk at a time."""
    _check_dataset(dataset, "split_dataset")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction + test_fraction must be below 1 to leave images for training, got "
            f"{val_fraction} + {test_fraction}; lower one of them"
        )
    rng = np.random.default_rng(seed)
    labels = dataset.labels.numpy()
    official = official_positions(dataset)
    if "test" in official or "val" in official:
        _check_official(dataset, official)
        parts, train = dict(official), official["train"]
        for name, fraction in (("test", test_fraction), ("val", val_fraction)):
            if name not in parts:
                _check_pool(
                    dataset, train, 2, f"its official training part (to draw {name} from)", "add training images"
                )
                train, parts[name] = _holdout(labels, train, fraction, rng)
        parts["train"] = train
        return parts

    for name, count in dataset.class_counts().items():
        if count < MIN_IMAGES_PER_CLASS:
            raise DataError(
                f"class '{name}' in dataset '{dataset.name}' has {count} images; a train/val/test "
                f"split needs at least {MIN_IMAGES_PER_CLASS} per class: add images or drop the class"
            )
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(len(dataset.classes)):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = _part_sizes(len(members), val_fraction, test_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def stratified_sample(labels, max_images: int, seed: int | None = 0) -> np.ndarray:
    """The sorted positions of at most ``max_images`` of ``labels``, drawn per class in proportion to its size (at
    least one image of every class present, the images the rounding leaves going to the largest remainders) with
    ``seed``; every position when there are no more than ``max_images``."""
    labels = np.asarray(labels)
    if len(labels) <= max_images:
        return np.arange(len(labels))
    rng = np.random.default_rng(0 if seed is None else seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts * max_images / len(labels)).astype(int))
    remainder = counts * max_images / len(labels) - np.floor(counts * max_images / len(labels))
    for index in np.argsort(-remainder, kind="stable"):
        if quota.sum() >= max_images:
            break
        if quota[index] < counts[index]:
            quota[index] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=min(int(n), int(count)), replace=False)
        for label, n, count in zip(classes, quota, counts)
    ]
    return np.sort(np.concatenate(chosen))


def kfold_splits(dataset: ImageDataset, folds: int, seed: int, val_fraction: float | None = None) -> list[Splits]:
    """:func:`kfold_indices` as :class:`Splits` (each part's images copied, with its ``indices``); see there."""
    return [_make_splits(dataset, parts) for parts in kfold_indices(dataset, folds, seed, val_fraction)]


def kfold_indices(
    dataset: ImageDataset, folds: int, seed: int, val_fraction: float | None = None
) -> list[dict[str, np.ndarray]]:
    """Stratified, seeded k-fold cross-validation splits of the non-test images of a dataset.

    The pool is every image that is not an official test image (``dataset.parts``; an official
    ``val/`` joins the pool). scikit-learn's ``StratifiedKFold(folds, shuffle=True,
    random_state=seed)`` cuts it into ``folds`` held-out folds, each with every class in the pool's
    proportions; every pool image is held out exactly once. Fold ``i`` is evaluated on its held-out
    fold, as Puls et al. report cross-validated accuracy and F1:

    - **without an official test set**: ``test`` is the held-out fold, and ``val`` a stratified,
      seeded ``val_fraction`` of each class of the fold's training part (for early stopping and the
      best epoch), ``train`` the rest;
    - **with an official test set**: ``val`` is the held-out fold (the cross-validated score is then
      the validation score), ``train`` the rest of the pool, and ``test`` the official test set in every
      fold; ``val_fraction`` is unused.

    Same seed, same folds.

    Parameters
    ----------
    dataset : ImageDataset
        The dataset; each class needs at least ``folds`` pool images (and enough that each fold's
        training part keeps 2 of them without an official test set).
    folds : int
        Number of folds, at least 2.
    seed : int
        Seeds the fold assignment and the validation draw.
    val_fraction : float or None, default=None
        Share of each class of a fold's training part kept for validation, in (0, 1); None means
        :data:`DEFAULT_VAL_FRACTION` (0.15).

    Returns
    -------
    list of dict
        ``folds`` dicts of positions in ``dataset`` (``train``, ``val``, ``test``), fold order; no image is
        copied (:func:`kfold_splits` makes them :class:`Splits`).

    Raises
    ------
    DataError
        If ``folds`` or ``val_fraction`` is invalid, or a class has too few images for the folds.

    References
    ----------
    Puls et al., transfer learning with frozen feature extractors and 5-fold cross-validation.
    """
    from sklearn.model_selection import StratifiedKFold

    _check_dataset(dataset, "kfold_splits")
    if isinstance(folds, bool) or not isinstance(folds, Integral) or folds < 2:
        raise DataError(f"folds must be an integer >= 2 (the number of cross-validation folds), got {folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    _check_fraction("val_fraction", val_fraction)
    folds, labels = int(folds), dataset.labels.numpy()
    official = official_positions(dataset)
    if "test" in official:
        _check_official(dataset, official)
        pool = np.sort(np.concatenate([official[name] for name in ("train", "val") if name in official]))
        needed = folds
    else:
        pool = np.arange(len(dataset))
        needed = next(n for n in range(folds, 4 * folds + 4) if n - math.ceil(n / folds) >= 2)
    _check_pool(dataset, pool, needed, f"its {folds}-fold cross-validation pool", "add images or use fewer folds")

    cutter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed))
    result = []
    for fold, (rest, held) in enumerate(cutter.split(np.zeros(len(pool)), labels[pool])):
        if "test" in official:
            parts = {"train": pool[rest], "val": pool[held], "test": official["test"]}
        else:
            rng = np.random.default_rng([int(seed), fold])
            train, val = _holdout(labels, pool[rest], val_fraction, rng)
            parts = {"train": train, "val": val, "test": pool[held]}
        result.append({name: np.sort(np.asarray(positions, dtype=np.int64)) for name, positions in parts.items()})
    return result


def resplit(splits: Splits, seed: int) -> Splits:
    """Another train / validation partition of the same images: the pool of ``splits.train`` and ``splits.val``
    drawn again with ``seed``, each class keeping as many validation images as it had; ``splits.test`` untouched.

    What a re-evaluation trains on to score a config on validation images its first run did not choose by
    (:mod:`nbtl.search.reevaluate` with ``resplit: true``): on a small validation split the noise of *which*
    images validate is larger than that of the training seed. Same seed, same partition, so several configs
    re-scored with one seed are compared on the same new validation images.
    """
    train, val = splits.train, splits.val
    images = torch.cat([train.images, val.images])
    labels = torch.cat([train.labels, val.labels])
    pool = ImageDataset(images, labels, list(train.classes), train.name, train.grayscale, train.original_size)
    rng = np.random.default_rng(seed)
    pool_labels, val_labels = labels.numpy(), val.labels.numpy()
    held = [
        rng.choice(np.flatnonzero(pool_labels == label), size=int((val_labels == label).sum()), replace=False)
        for label in np.unique(val_labels)
    ]
    val_positions = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train_positions = np.setdiff1d(np.arange(len(pool)), val_positions)
    return Splits(train=pool.subset(train_positions), val=pool.subset(val_positions), test=splits.test)


def official_positions(dataset: ImageDataset) -> dict[str, np.ndarray]:
    """Positions of each official part present (``{"train": ..., "test": ...}``); empty when the dataset
    has none (``dataset.parts`` is None)."""
    if dataset.parts is None:
        return {}
    return {
        name: np.flatnonzero(dataset.parts == name)
        for name in ("train", "val", "test")
        if (dataset.parts == name).any()
    }


def training_part(dataset: ImageDataset) -> ImageDataset:
    """The dataset without its official test images (all of it when it has none): what fit measures,
    recommendations and cross-validation may look at."""
    official = official_positions(dataset)
    if "test" not in official:
        return dataset
    return dataset.subset(np.flatnonzero(dataset.parts != "test"))


def _make_splits(dataset: ImageDataset, parts: dict[str, np.ndarray]) -> Splits:
    indices = {name: np.sort(np.asarray(parts[name], dtype=np.int64)) for name in ("train", "val", "test")}
    return Splits(**{name: dataset.subset(positions) for name, positions in indices.items()}, indices=indices)


def _holdout(labels: np.ndarray, pool: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, held)``: ``round(n * fraction)`` (at least 1, leaving at least 1) of each class of ``pool``
    held out, chosen with ``rng``."""
    rest, held = [], []
    for label in np.unique(labels[pool]):
        members = rng.permutation(pool[labels[pool] == label])
        n_held = min(len(members) - 1, max(1, math.floor(len(members) * fraction + 0.5)))
        held.append(members[:n_held])
        rest.append(members[n_held:])
    return np.concatenate(rest), np.concatenate(held)


def _check_pool(dataset: ImageDataset, pool: np.ndarray, needed: int, what: str, fix: str) -> None:
    counts = np.bincount(dataset.labels.numpy()[pool], minlength=len(dataset.classes))
    for name, count in zip(dataset.classes, counts.tolist()):
        if count < needed:
            raise DataError(
                f"class '{name}' in dataset '{dataset.name}' has {count} images in {what}; it needs at "
                f"least {needed}: {fix}, or drop the class"
            )


def _check_official(dataset: ImageDataset, official: dict[str, np.ndarray]) -> None:
    """Every class must have an image in every official part (else that part cannot score it)."""
    if "train" not in official:
        raise DataError(
            f"dataset '{dataset.name}' has official parts {', '.join(official)} but no training images; "
            "give a train/ folder (or the training data) as well"
        )
    labels = dataset.labels.numpy()
    for name, positions in official.items():
        present = set(labels[positions].tolist())
        missing = [c for label, c in enumerate(dataset.classes) if label not in present]
        if missing:
            raise DataError(
                f"dataset '{dataset.name}': the official {name} part has no image of class "
                f"{missing[0]!r}; every part needs every class: add images or drop the class"
            )


def _check_dataset(dataset, function: str) -> None:
    if not isinstance(dataset, ImageDataset):
        raise DataError(
            f"{function} needs an ImageDataset, got {type(dataset).__name__}; load one with nbtl.data.load_dataset"
        )


def _part_sizes(count: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Validation and test sizes for one class of ``count >= 3`` images, each at least 1."""
    n_val = max(1, math.floor(count * val_fraction + 0.5))
    n_test = max(1, math.floor(count * test_fraction + 0.5))
    while count - n_val - n_test < 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise DataError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}")
