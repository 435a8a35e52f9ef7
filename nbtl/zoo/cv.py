"""Stratified, seeded k-fold cross-validation of a zoo study: which images train and which are scored in
each fold of each repetition.

The folds are :func:`nbtl.data.kfold_splits`' (scikit-learn's ``StratifiedKFold``, shuffled with the seed;
an official test set is never part of a fold). Every repetition (one per study seed) deals the folds
anew, so a study's ``folds × seeds`` estimates are paired across backbones and heads: every cell sees
exactly the same images in fold ``f`` of seed ``s`` (Puls et al.'s 5-fold cross-validation, repeated).

- ``frozen`` trains the head on every pool image outside the held-out fold and scores the held-out fold.
- ``finetune`` trains on the fold's ``train`` part, picks its best epoch on ``val`` and scores ``test``
  (:func:`nbtl.data.kfold_splits`: without an official test set ``val`` is carved from the fold's training
  part and ``test`` is the held-out fold; with one, ``val`` is the held-out fold and ``test`` the official set).

Plain NumPy: no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbtl.data import Splits, kfold_indices

__all__ = ["Fold", "fold_splits", "study_folds"]


@dataclass(frozen=True)
class Fold:
    """One fold of one repetition: sorted positions into the dataset of its ``train``, ``val`` and ``test``
    parts (as :func:`nbtl.data.kfold_splits` makes them) and whether ``test`` is an official test set."""

    fold: int
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    official_test: bool = False

    @property
    def held_out(self) -> np.ndarray:
        """The fold's held-out pool images: the cross-validation estimate is measured on them."""
        return self.val if self.official_test else self.test

    @property
    def rest(self) -> np.ndarray:
        """Every pool image outside the held-out fold (what a frozen head trains on), sorted."""
        return self.train if self.official_test else np.sort(np.concatenate([self.train, self.val]))


def study_folds(dataset, folds: int, seeds: list[int], val_fraction: float | None = None) -> list[Fold]:
    """``folds`` stratified folds for every seed in ``seeds`` (``len(seeds) * folds`` :class:`Fold` s, seed
    by seed), from :func:`nbtl.data.kfold_indices`; a class with too few images raises its
    :class:`~nbtl.errors.DataError`."""
    official = dataset.parts is not None and bool((np.asarray(dataset.parts) == "test").any())
    result = []
    for seed in seeds:
        for index, parts in enumerate(kfold_indices(dataset, folds, int(seed), val_fraction)):  # positions only
            result.append(Fold(index, int(seed), parts["train"], parts["val"], parts["test"], official))
    return result


def fold_splits(dataset, fold: Fold):
    """The :class:`~nbtl.data.Splits` a fine-tuning trial of ``fold`` trains, validates and is scored on."""
    parts = {"train": fold.train, "val": fold.val, "test": fold.test}
    return Splits(**{name: dataset.subset(positions) for name, positions in parts.items()}, indices=parts)
