"""Loading, splitting and augmenting labelled image datasets.

Plain PyTorch / NumPy / PIL; no Ray or MLflow here. Images are decoded and resized once,
by :func:`load_dataset`, into an :class:`ImageDataset`; :func:`split_dataset` makes
stratified train / val / test parts (honouring a dataset's official test / val parts) and
:func:`kfold_splits` stratified cross-validation folds; :class:`AugmentedDataset` serves augmented
items for training.
"""

from nbtl.data.augment import AugmentedDataset, make_augmentation
from nbtl.data.dataset import ImageDataset
from nbtl.data.sources import load_dataset
from nbtl.data.splits import Splits, kfold_indices, kfold_splits, split_dataset, training_part

__all__ = [
    "AugmentedDataset",
    "ImageDataset",
    "Splits",
    "kfold_indices",
    "kfold_splits",
    "load_dataset",
    "make_augmentation",
    "split_dataset",
    "training_part",
]
