"""The Python face of nbtl: a search from a notebook or a script, as ``Tuner.fit()`` is Ray Tune's.

>>> import nbtl
>>> result = nbtl.search("tiny", "digits", trials=3)           # doctest: +SKIP
>>> result.table.head()                                        # one row per trial, best first   # doctest: +SKIP
>>> result.best_config, result.model_uri, result.parent_run_id  # doctest: +SKIP

The command line (``nbtl search``) is a thin layer over the same :func:`nbtl.search.runner.run_search`; the
arguments here are its flags, and what one leaves as None comes from the space, then nbtl's defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nbtl.backbones import parse_weights
from nbtl.search.runner import SearchOptions, run_search
from nbtl.search.space import as_space
from nbtl.search.units import parse_duration, parse_size

logger = logging.getLogger(__name__)


def search(
    space: Any = "default",
    data: str = "digits",
    *,
    time_budget: float | str | None = None,
    trials: int | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    image_size: int | str | None = None,
    per_class: int | None = None,
    seed: int | None = None,
    cpu: float | None = None,
    gpu: float | None = None,
    recommend: bool = True,
    register: bool | str = True,
    keep_weights: int | None = None,
    cache_size: int | str | None = None,
    optuna_storage: str | None = None,
    weights: dict[str, str] | None = None,
    say: Callable[[str], None] | None = None,
):
    """Run a non-binary transfer search and return its :class:`~nbtl.search.runner.SearchResult`.

    Parameters
    ----------
    space : str, path or SearchSpace, default="default"
        A shipped space's name (``default``, ``binary``, ``tiny``, ``meta``), a YAML file, or a loaded space.
    data : str, default="digits"
        The dataset: a built-in's name, an ImageFolder directory or a CSV (see :func:`nbtl.data.load_dataset`).
    time_budget : seconds or str, optional
        The whole search's wall-clock budget, e.g. ``600`` or ``"10m"``; trials run until it ends.
    trials, name, max_concurrent, image_size, per_class, seed, cpu, gpu : optional
        As ``nbtl search``'s flags of those names.
    tracking_uri, storage_path, address : str, optional
        The MLflow store (default ``sqlite:///mlflow.db``), the results folder (default ``./nbtl_results``) and
        a Ray cluster (default: an embedded Ray that ends with the search).
    recommend : bool, default=True
        Start from ``nbtl recommend``'s configs (and rank Optuna's proposals by the learned prior).
    register : bool or str, default=True
        Register the best model in the MLflow Model Registry (under the search's name, or this name).
    keep_weights : int, optional
        The best K trials keep their weights for ``nbtl ensemble``.
    cache_size : int or str, optional
        Bytes (or ``"20G"``) the frozen-prefix store may take on disk.
    optuna_storage : str, optional
        The Optuna study's database URL (default: ``optuna.db`` in the search's results folder).
    weights : dict, optional
        ``{backbone: path}``: local weights files (``.pth`` state dicts) to use instead of the default weights.
    say : callable, optional
        Where progress lines go (default: this module's logger at INFO).

    Returns
    -------
    SearchResult
        ``.table`` (DataFrame, best first), ``.best_config``, ``.model_uri``, ``.parent_run_id``,
        ``.tracking_uri``, ``.experiment_path``.
    """
    loaded = as_space(space)
    options = SearchOptions(
        data=str(data),
        name=name,
        trials=trials,
        max_concurrent=max_concurrent,
        address=address,
        tracking_uri=tracking_uri,
        storage_path=None if storage_path is None else str(storage_path),
        image_size=image_size,
        per_class=per_class,
        seed=seed,
        cpu=cpu,
        gpu=gpu,
        time_budget=None if time_budget is None else parse_duration(time_budget),
        recommend=recommend,
        keep_weights=keep_weights,
        register=register if isinstance(register, str) else None,
        register_model=bool(register),
        cache_size=None if cache_size is None else parse_size(cache_size, "cache_size"),
        optuna_storage=optuna_storage,
        weights=parse_weights([f"{name}={path}" for name, path in (weights or {}).items()], loaded.backbones()),
    )
    return run_search(loaded, options, print_fn=say or logger.info)
