"""How well a pre-trained backbone's frozen features already fit a dataset, block by block.

>>> from nbtl.data import load_dataset
>>> from nbtl.fit import block_features, fit_table
>>> data = load_dataset("digits", image_size=64)                      # doctest: +SKIP
>>> features = block_features(data, "efficientnet_lite0")             # doctest: +SKIP
>>> fit_table(features)          # one row per block: LogME, H-score, kNN, probe, LEEP, NCE   # doctest: +SKIP

Features are cached on disk (:func:`~nbtl.fit.features.default_cache_dir`); the measures are
plain functions of ``(features, labels)`` or ``(source_probs, labels)`` in :mod:`nbtl.fit.measures`,
registered by name in :mod:`nbtl.fit.registry` (:func:`register_fit_measure` adds one).
Plain PyTorch / NumPy / scikit-learn: no Ray or MLflow here. torch is imported only when
the feature extractor is first used, so the measures alone load fast.
"""

from nbtl.fit._validation import MeasureError
from nbtl.fit.measures import h_score, knn_accuracy, leep, linear_probe_accuracy, logme, nce
from nbtl.fit.registry import fit_measure_names, get_fit_measure, register_fit_measure, remove_fit_measure
from nbtl.fit.table import fit_table

__all__ = [
    "BlockFeatures",
    "MeasureError",
    "block_features",
    "default_cache_dir",
    "fit_measure_names",
    "fit_table",
    "get_fit_measure",
    "h_score",
    "knn_accuracy",
    "leep",
    "linear_probe_accuracy",
    "logme",
    "meta_features",
    "nce",
    "register_fit_measure",
    "remove_fit_measure",
    "state_dict_hash",
]

_FEATURES = {"BlockFeatures", "block_features", "default_cache_dir", "meta_features", "state_dict_hash"}


def __getattr__(name: str):
    if name in _FEATURES:  # lazy: nbtl.fit.features imports torch and the backbones
        from nbtl.fit import features

        return getattr(features, name)
    raise AttributeError(f"module 'nbtl.fit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FEATURES)
