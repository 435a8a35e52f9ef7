"""The configs every search runs first: the linear probe, the conventional recipe, ``nbtl recommend``'s configs.

A search that can end below the linear probe, or below the recipe everybody uses, is not worth its time:
so trial 1 is the probe (every block transferred and frozen, a linear head fitted on the pooled features by
L-BFGS with a cross-validated L2 strength, nbtl.fit.probe: seconds), trial 2 the conventional recipe (everything
fine-tuned at one learning rate, L2 only, a linear head), then the configs ``nbtl recommend`` derives from
the fit of the pre-trained features to this data. Each is moved to the nearest point of the space (what
moved is said) and enqueued in Optuna, so the sampler learns from them (Kumar et al., ICLR 2022, on
linear probing first; Feurer et al. 2018 on warm-starting Bayesian optimisation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbtl.heuristics import LearnedRecommender, default_recommender_path, load_rules
from nbtl.heuristics.recommend import FIT_MAX_IMAGES, measure_task, recommend
from nbtl.search.cost import FIT_SHARE, fit_seconds, measure_speed
from nbtl.search.settings import RECOMMEND, get_start_point
from nbtl.search.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass
class StartPoints:
    """What the start of a search found: the points to enqueue (with where each came from) and, when
    ``nbtl recommend`` ran, the task's measured fit (the learned prior reads it)."""

    points: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    task: Any = None  # nbtl.heuristics.recommend.TaskFit, or None
    seconds: float = 0.0

    def add(
        self,
        space: SearchSpace,
        config: dict[str, Any],
        label: str,
        say: Callable[[str], None],
        kind: str = "start point",
    ) -> None:
        """``config`` moved to the nearest point of ``space`` (saying what moved), unless already there."""
        point, changes = space.project(config)
        for change in changes:
            say(f"{kind} {label}: {change}")
        if point and point not in self.points:
            self.points.append(point)
            self.labels.append(label)


def start_points(
    space: SearchSpace,
    names: list[str],
    *,
    data: str,
    train,
    seed: int,
    image_size: int,
    per_class: int | None,
    classes: str | None,
    say: Callable[[str], None],
    weights: dict[str, str] | None = None,
    seconds: float | None = None,
    threads: int = 1,
    image_sizes: dict[str, int] | None = None,
) -> StartPoints:
    """The start points ``names`` (registered recipes such as ``probe`` and ``conventional``, and ``recommend``:
    :func:`nbtl.search.settings.start_point_names`) as points of ``space``.

    ``recommend`` measures the fit of every backbone of the space on ``train`` (the search's own training
    split, so no validation or test image is seen) and applies the shipped rules and learned recommender;
    the probe then uses the backbone ranked first. With ``seconds`` (the search's time budget) the fit measures take
    about :data:`~nbtl.search.cost.FIT_SHARE` of it at most: :func:`fit_images` says on how many training images
    (each backbone's forward pass timed here on ``threads`` threads, at its size in ``image_sizes``), and
    ``recommend`` is skipped, saying why, when that is too few.
    """
    import time

    started = time.perf_counter()
    found = StartPoints()
    backbones = space.backbones()
    recommended: list[dict[str, Any]] = []
    affordable = FIT_MAX_IMAGES
    if RECOMMEND in names and seconds is not None:
        sizes = {b: int((image_sizes or {}).get(b, image_size)) for b in backbones}
        affordable, why = fit_images(sizes, len(train), len(train.classes), seconds, threads)
        if why:
            say(why)
        if affordable == 0:
            names = [n for n in names if n != RECOMMEND]
    if RECOMMEND in names:
        rules = load_rules()
        path = default_recommender_path()
        model = LearnedRecommender.load(path) if path is not None else None
        found.task = measure_task(
            data,
            backbones,
            image_size=image_size,
            per_class=per_class,
            classes=classes,
            seed=seed,
            fit_curve=rules.fit_curve,
            peak_tolerance=rules.peak_tolerance,
            train=train,
            log=lambda line: log.info(line),
            weights=weights,
            max_images=affordable,
        )
        recommendation = recommend(
            found.task,
            rules,
            model,
            {"image_size": image_size, "per_class": per_class, "classes": classes, "split_seed": seed},
        )
        recommended = [entry["config"] for entry in recommendation.configs]
        backbones = [entry["backbone"] for entry in recommendation.backbone_ranking] or backbones
        say(
            f"recommend: fit of {', '.join(backbones)} measured in {found.task.seconds:.1f}s; "
            f"{len(recommended)} config(s), best backbone {backbones[0]}"
        )
    for name in names:  # the recipes, in the space's order, on the backbone ranked first
        if name != RECOMMEND:
            found.add(space, get_start_point(name).config(backbones[0]), name, say)
    for number, config in enumerate(recommended, start=1):
        found.add(space, config, f"recommend-{number}", say)
    found.seconds = time.perf_counter() - started
    return found


#: The fewest images per class the fit measures are taken on (:func:`fit_images`): below it ``recommend`` is skipped.
FIT_MIN_PER_CLASS = 10


def fit_images(
    sizes: dict[str, int], n_train: int, n_classes: int, seconds: float, threads: int = 1
) -> tuple[int, str]:
    """On how many training images the fit measures of the backbones ``sizes`` (backbone -> image size) may run
    under a time budget of ``seconds``: at most :data:`~nbtl.search.cost.FIT_SHARE` of it by
    :func:`nbtl.search.cost.fit_seconds` (each backbone's forward pass timed here on ``threads``), at most
    :data:`~nbtl.heuristics.recommend.FIT_MAX_IMAGES`; 0 (``recommend`` skipped) when fewer than
    :data:`FIT_MIN_PER_CLASS` images per class fit. Returns the count and what to say ('' when all of them fit)."""
    speeds = [measure_speed(b, size, threads) for b, size in sizes.items()]
    wanted = min(n_train, FIT_MAX_IMAGES)
    share = FIT_SHARE * max(0.0, seconds)
    fixed, per_image = fit_seconds(speeds, 0), fit_seconds(speeds, 1) - fit_seconds(speeds, 0)
    fits = int((share - fixed) / max(per_image, 1e-9))
    if fits >= wanted:
        return wanted, ""
    every = (
        f"measuring the fit of {', '.join(sizes)} would take about {fit_seconds(speeds, wanted):.0f}s on {wanted:,} "
        "images here"
    )
    least = FIT_MIN_PER_CLASS * max(1, n_classes)
    if fits < least:
        return 0, (
            f"recommend skipped: {every}, and even {least:,} images ({FIT_MIN_PER_CLASS} a class) would take more than "
            f"{FIT_SHARE:.0%} of the {seconds:.0f}s budget; a longer --time-budget brings it back"
        )
    return fits, f"recommend: {every}; measured on {fits:,} of them, {FIT_SHARE:.0%} of the {seconds:.0f}s budget"
