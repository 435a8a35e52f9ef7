"""Stratified, seeded train / validation / test splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from nbtl.data.dataset import ImageDataset
from nbtl.errors import DataError

MIN_IMAGES_PER_CLASS = 3  # one each for train, val and test


@dataclass
class Splits:
    """The three disjoint parts of one dataset."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset


def split_dataset(
    dataset: ImageDataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Splits:
    """Split a dataset into stratified train, validation and test parts.

    Each class is split on its own: its images are shuffled with ``seed`` and
    ``round(n * test_fraction)`` go to test, ``round(n * val_fraction)`` to validation and
    the rest to train, with at least one image in each part. So every class appears in
    every part and the class proportions match the dataset's up to rounding (small classes
    can give val / test a bit more than their fraction). Same seed, same split.

    Parameters
    ----------
    dataset : ImageDataset
        The dataset to split; every class needs at least 3 images.
    val_fraction : float, default=0.15
        Share of each class for validation, in (0, 1).
    test_fraction : float, default=0.15
        Share of each class for test, in (0, 1); ``val_fraction + test_fraction < 1``.
    seed : int, default=0
        Seeds the shuffle.

    Returns
    -------
    Splits
        ``train``, ``val`` and ``test`` subsets, each keeping the dataset's order.

    Raises
    ------
    DataError
        If a fraction is out of range, or a class has fewer than 3 images.
    """
    if not isinstance(dataset, ImageDataset):
        raise DataError(
            f"split_dataset needs an ImageDataset, got {type(dataset).__name__}; load one with nbtl.data.load_dataset"
        )
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction + test_fraction must be below 1 to leave images for training, got "
            f"{val_fraction} + {test_fraction}; lower one of them"
        )
    for name, count in dataset.class_counts().items():
        if count < MIN_IMAGES_PER_CLASS:
            raise DataError(
                f"class '{name}' in dataset '{dataset.name}' has {count} images; a train/val/test "
                f"split needs at least {MIN_IMAGES_PER_CLASS} per class: add images or drop the class"
            )

    rng = np.random.default_rng(seed)
    labels = dataset.labels.numpy()
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(len(dataset.classes)):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = _part_sizes(len(members), val_fraction, test_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    subsets = {name: dataset.subset(np.sort(np.concatenate(chunks))) for name, chunks in parts.items()}
    return Splits(**subsets)


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
