"""Outputs of a pre-trained backbone's frozen prefix, computed once and shared by every trial.

A trial that freezes blocks ``[0, k)`` never changes what they compute, so :class:`PrefixStore`
computes their outputs once per search (per backbone, weights, ``k``, image size, data and
augmentation views), keeps them in memory and, given a directory, on disk for other processes.
"""

from nbtl.features.keys import dataset_fingerprint, weights_hash
from nbtl.features.prefix import PrefixEntry, PrefixStore, remove_staging

__all__ = ["PrefixEntry", "PrefixStore", "dataset_fingerprint", "remove_staging", "weights_hash"]
