"""``nbtl.zoo(...)``: a zoo study from Python (the package can be called), the function ``nbtl zoo`` is a thin layer
over."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nbtl.data.settings import DataSettings, checked_overrides
from nbtl.search.space import SearchSpace, as_space
from nbtl.search.units import parse_duration
from nbtl.zoo.study import ZooOptions, ZooResult, run_zoo

__all__ = ["zoo"]

logger = logging.getLogger("nbtl.api")


def zoo(
    data: str | Sequence[str],
    backbones: Sequence[str],
    heads: Sequence[str] = ("linear",),
    *,
    mode: str = "frozen",
    folds: int = 5,
    seeds: int = 1,
    recipe: dict[str, Any] | None = None,
    space: str | SearchSpace = "default",
    image_size: int | str | None = None,
    per_class: int | None = None,
    classes: str | None = None,
    seed: int | None = None,
    name: str | None = None,
    time_budget: float | str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    max_concurrent: int | None = None,
    cpu: float = 1.0,
    gpu: float = 0.0,
    use_cache: bool = True,
) -> ZooResult:
    """``nbtl zoo``: compare ``backbones`` x ``heads`` on each dataset of ``data`` by seeded k-fold
    cross-validation, frozen (a new head on the last block's features) or fine-tuned (``mode="finetune"``, with
    ``recipe``'s settings over the conventional recipe), on Ray Tune and tracked in MLflow; returns a
    :class:`~nbtl.zoo.study.ZooResult` (``.folds``, ``.summary``, ``.comparison``)."""
    overrides = checked_overrides(image_size=image_size, per_class=per_class, classes=classes, seed=seed)
    options = ZooOptions(
        data=[data] if isinstance(data, str) else list(data),
        backbones=list(backbones),
        heads=list(heads),
        settings=DataSettings.from_space(as_space(space), overrides),
        mode=mode,
        folds=folds,
        seeds=seeds,
        recipe=dict(recipe or {}),
        name=name,
        time_budget=None if time_budget is None else parse_duration(time_budget),
        address=address,
        tracking_uri=tracking_uri,
        storage_path=storage_path,
        max_concurrent=max_concurrent,
        cpu=cpu,
        gpu=gpu,
        use_cache=use_cache,
    )
    return run_zoo(options, print_fn=logger.info)
