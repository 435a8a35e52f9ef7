"""The Python face of nbtl, one function per command, as ``Tuner.fit()`` is Ray Tune's; each command line is a thin
layer over its function here.

>>> import nbtl
>>> result = nbtl.search("default", "digits", time_budget="10m")  # a SearchResult: .table, .best_config, .model_uri
>>> found = nbtl.recommend("digits", per_class=100)               # a Recommendation: .configs, .to_yaml()
>>> kept = nbtl.api.train("recommended.yaml", data="digits")      # a TrainOutcome: .metrics, .run
>>> study = nbtl.zoo(["digits"], ["efficientnet_lite0"])          # a ZooResult: .summary, .comparison

(``nbtl.train`` is the module that trains one trial, so ``nbtl train``'s function is :func:`nbtl.api.train`.)
Progress goes to the ``nbtl`` logger: ``logging.basicConfig(level=logging.INFO)`` shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from nbtl.data.settings import DataSettings, checked_overrides
from nbtl.errors import ConfigError
from nbtl.heuristics import LearnedRecommender, default_recommender_path, load_rules
from nbtl.heuristics.recommend import Recommendation, measure_task
from nbtl.heuristics.recommend import recommend as recommend_configs
from nbtl.heuristics.training import TrainOutcome, train_recommended
from nbtl.search.api import search
from nbtl.search.space import SearchSpace, as_space, load_space
from nbtl.zoo.api import zoo

__all__ = ["recommend", "search", "train", "zoo"]

logger = logging.getLogger("nbtl.api")

#: The space whose data settings and backbones the commands start from unless told otherwise.
DEFAULT_SPACE = "default"


def recommend(
    data: str,
    *,
    space: str | SearchSpace = DEFAULT_SPACE,
    backbones: Sequence[str] | None = None,
    image_size: int | str | None = None,
    per_class: int | None = None,
    classes: str | None = None,
    seed: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    test_data: str | None = None,
    weights: dict[str, str] | None = None,
    rules: str | None = None,
    recommender: str | None = None,
    learned: bool = True,
    use_cache: bool = True,
    out: str | Path | None = None,
) -> Recommendation:
    """``nbtl recommend``: measure how well each backbone's frozen features fit ``data`` (on the training split a
    search of ``space`` makes) and recommend configs inside ``space``, best first, each with its reasons.

    ``backbones`` (default: the space's) are ranked; ``weights`` maps a backbone to a local weights file;
    ``rules`` / ``recommender`` replace the shipped rules and learned recommender (``learned=False``: rules only).
    With ``out`` the recommendation is also written there as YAML (what :func:`train` and ``--warm-start`` read).
    The measured fit is the result's ``task`` (a :class:`~nbtl.heuristics.recommend.TaskFit`).
    """
    space = as_space(space)
    if backbones is None:
        backbones = space.backbones()
    else:
        backbones = [str(b).strip() for b in backbones if str(b).strip()]
        if not backbones or len(set(backbones)) != len(backbones):
            raise ConfigError(f"backbones must name distinct backbones, got {backbones!r}; see nbtl backbones")
        space = space.with_backbones(backbones)  # the backbones asked for stay, every other setting is clipped
    overrides = checked_overrides(
        image_size=image_size,
        per_class=per_class,
        classes=classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        test_data=test_data,
    )
    settings = DataSettings.from_space(space, overrides)
    logger.debug("data settings: %s", settings)
    loaded_rules = load_rules(rules)
    model = None
    if learned:
        path = recommender or default_recommender_path()
        if path is not None:
            model = LearnedRecommender.load(path)
            model.info["source"] = str(path)
    task = measure_task(
        data,
        list(backbones),
        settings,
        fit_curve=loaded_rules.fit_curve,
        peak_tolerance=loaded_rules.peak_tolerance,
        use_cache=use_cache,
        weights=weights,
    )
    result = recommend_configs(task, loaded_rules, model, settings, space=space)
    if out is not None:
        try:
            Path(out).write_text(result.to_yaml())
        except OSError as error:
            raise ConfigError(f"cannot write {out}: {error.strerror}") from None
    return result


def train(
    config: str | Path,
    data: str | None = None,
    *,
    config_index: int = 1,
    epochs: int | None = None,
    floor: bool = True,
    image_size: int | str | None = None,
    per_class: int | None = None,
    classes: str | None = None,
    seed: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    test_data: str | None = None,
    tracking_uri: str | None = None,
    name: str | None = None,
    say=None,
) -> TrainOutcome:
    """``nbtl train``: train config ``config_index`` of a recommendation file (or a search's best config) on
    ``data`` (default: the dataset the file names), with the linear probe as its floor unless ``floor=False``, as
    MLflow runs in experiment ``name`` (default ``train-<dataset>``); the better of the two is tagged
    ``nbtl.chosen=true`` and returned. Progress lines go to ``say`` (default: the ``nbtl.api`` logger)."""
    overrides = checked_overrides(
        image_size=image_size,
        per_class=per_class,
        classes=classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        test_data=test_data,
    )
    return train_recommended(
        str(config),
        data=data,
        overrides=overrides,
        base=DataSettings.from_space(load_space(DEFAULT_SPACE)),
        tracking_uri=tracking_uri,
        experiment=name,
        epochs=epochs,
        config_index=config_index,
        floor=floor,
        say=say or logger.info,
    )
