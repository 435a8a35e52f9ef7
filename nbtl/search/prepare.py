"""What a search prepares once, on the driver, before any trial: the data decoded into its memory-mapped file (one
per image size), each backbone's weights, a trial's resources, and what the trials and the hand-over are given."""

from __future__ import annotations

import dataclasses
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbtl.backbones import get_spec, load_pretrained_state_dict
from nbtl.config import TrialConfig
from nbtl.data.arrayfile import (
    DATA_DIR,
    decode_splits,
    ensure_splits,
    official_test,
    open_splits,
    subsample_positions,
    subsample_splits,
)
from nbtl.data.settings import AUTO, DataSettings
from nbtl.search.cluster import SearchError
from nbtl.search.cost import (
    FIT_SHARE,
    SEARCH_SLOWDOWN,
    SUBSAMPLE_MIN_PER_CLASS,
    auto_image_size,
    auto_subsample,
    measure_speed,
    scaled,
    trial_seconds,
)
from nbtl.search.handover import Handover
from nbtl.search.options import (
    DEFAULTS,
    SearchOptions,
    kept_seconds,
    setting,
    storage_folder,
    time_budget,
    trial_resources,
)
from nbtl.search.settings import RECOMMEND, SUBSAMPLE_AUTO, get_start_point
from nbtl.search.space import SearchSpace
from nbtl.search.trainable import nbtl_trainable


@dataclass
class Prepared:
    """What every trial of a search shares: decoded splits, pre-trained weights, resources."""

    dataset_name: str
    splits: Any  # at the first backbone's size: what the start points and the prior measure
    weights: dict[str, Any]
    resources: dict[str, float]
    data_settings: Any = None  # nbtl.data.settings.DataSettings: the images, their size, split and augmentation
    dataset_input: dict[str, Any] = field(default_factory=dict)  # nbtl.data.describe: logged as the runs' input
    image_sizes: dict[str, int] = field(default_factory=dict)  # each backbone's size (a trial's own image_size aside)
    splits_by_size: dict[int, Any] = field(default_factory=dict)  # one data file per size a trial may train at
    subsample: float = 1.0  # the share of the images the trials train and evaluate on (search.subsample)

    def trial_splits(self) -> Any:
        """What the trials get: the splits, or with several sizes the splits of each size."""
        return self.splits if len(self.splits_by_size) <= 1 else dict(self.splits_by_size)


def searched_image_sizes(space: SearchSpace) -> list[int]:
    """The sizes of a space's ``image_size`` parameter (none when it is not searched)."""
    for p in space.parameters:
        if p.name == "image_size":
            if not p.fixed and p.choices is None:
                raise SearchError(
                    f"{space.path}: image_size is searched over choices, one data file each: "
                    "write image_size: {choices: [128, 160, 224]}"
                )
            return sorted({int(v) for v in p.candidates() if v is not None})
    return []


def prepare(space: SearchSpace, options: SearchOptions, print_fn: Callable[[str], None]) -> Prepared:
    """Decode the data once, into the memory-mapped data file of :mod:`nbtl.data.arrayfile` (reused when it is
    there), and load each backbone's weights once, on the driver. The splits travel to the trials as the file's
    path, the weights through Ray's object store (``tune.with_parameters``): once per node, never per trial."""

    started = time.perf_counter()
    # the one data-settings object: nbtl recommend and nbtl train read the same, so they mean the same images
    data_settings = DataSettings.from_space(
        space,
        options.settings_overrides(),
    )
    root = storage_folder(options.storage_path) / DATA_DIR
    if data_settings.image_size == AUTO:
        data_settings = _auto_image_size(space, options, data_settings, root, print_fn)
    # each backbone's size (all the same unless image_size is native), and the sizes a space searches
    image_sizes = {b: data_settings.size_for(b) for b in space.backbones()}
    sizes = list(dict.fromkeys([*image_sizes.values(), *searched_image_sizes(space)]))
    by_size, first_meta = {}, None
    for size in sizes:
        splits, meta = _data_file(options.data, dataclasses.replace(data_settings, image_size=size), root, print_fn)
        by_size[size] = splits
        first_meta = first_meta or meta
    fraction = _subsample(space, options, by_size[sizes[0]], image_sizes, time.perf_counter() - started, print_fn)
    if fraction < 1:
        by_size = {
            size: subsample_splits(splits, fraction, data_settings.split_seed) for size, splits in by_size.items()
        }
    meta, splits = first_meta, by_size[sizes[0]]
    random_init_only = any(p.name == "pretrained" and True not in p.candidates() for p in space.parameters)
    unknown = sorted(set(options.weights) - set(space.backbones()))
    if unknown:
        raise SearchError(
            f"--weights {unknown[0]}=...: the space searches {', '.join(space.backbones())}, not {unknown[0]}; "
            "give weights for one of those"
        )
    weights = (
        {}
        if random_init_only
        else {b: load_pretrained_state_dict(b, options.weights.get(b)) for b in space.backbones()}
    )
    resources = trial_resources(space, options)
    return Prepared(
        meta["name"], splits, weights, resources, data_settings, meta["input"], image_sizes, by_size, fraction
    )


def _fixed_steps(space: SearchSpace, n_train: int) -> dict[str, Any]:
    """The space's fixed epochs and batch size, if it fixes them."""
    fixed = {p.name: p.value for p in space.resolved(n_train).parameters if p.fixed and p.name in TrialConfig.keys()}
    return {k: v for k, v in fixed.items() if k in ("epochs", "batch_size")}


def _start_configs(space: SearchSpace, options: SearchOptions, backbone: str, n_train: int) -> list[TrialConfig]:
    """The configs of the space's start points on ``backbone``, with its fixed epochs and batch size (a recommended
    config costs about what the conventional recipe does)."""
    keep = _fixed_steps(space, n_train)
    names = [n for n in space.start_points if options.recommend or n != "recommend"]
    return [
        TrialConfig.from_dict({**get_start_point("conventional" if n == RECOMMEND else n).config(backbone), **keep})
        for n in names
    ]


def _subsample(
    space: SearchSpace, options: SearchOptions, splits, image_sizes: dict[str, int], elapsed: float, print_fn
) -> float:
    """The share of the images the trials train and evaluate on (``search.subsample``, ``--subsample``): the one
    given, or with ``auto`` on CPUs with a time budget :func:`nbtl.search.cost.auto_subsample` of the cheapest start
    point (or a half-frozen trial) on the slowest of the space's backbones (the start points run on the one the fit
    ranks first), timed here and times :data:`~nbtl.search.cost.SEARCH_SLOWDOWN`, in the time left for trials (the
    budget less the wrap-up, what was spent so far and the fit measures' share). Says what it chose when below 1."""
    value = setting(options, space, "subsample")
    n_train, n_val, n_test = len(splits.train), len(splits.val), len(splits.test)
    classes = len(splits.train.classes)
    official = official_test(splits)
    budget, resources = time_budget(options, space), trial_resources(space, options)
    if value == SUBSAMPLE_AUTO:
        if budget is None or resources["gpu"] or n_train < 2 * SUBSAMPLE_MIN_PER_CLASS * classes:
            return 1.0
        threads = int(max(1, resources["cpu"]))
        candidates = []  # (config, speed) of each start point and a half-frozen trial, on each backbone
        for backbone in space.backbones():
            speed = measure_speed(backbone, image_sizes[backbone], threads=threads)
            half = {"backbone": backbone, "freeze_blocks": len(speed.block_share) // 2, **_fixed_steps(space, n_train)}
            configs = [*_start_configs(space, options, backbone, n_train), TrialConfig.from_dict(half)]
            candidates.append([(c, speed) for c in configs])
        fit = FIT_SHARE * budget if options.recommend and RECOMMEND in space.start_points else 0.0
        left = budget - kept_seconds(budget, space) - elapsed - fit

        def cost_at(fraction: float) -> float:
            n_eval = round(n_val * fraction) + (n_test if "test" in official else round(n_test * fraction))
            cheapest = [min(trial_seconds(c, s, round(n_train * fraction), n_eval) for c, s in on) for on in candidates]
            return SEARCH_SLOWDOWN * max(cheapest)  # on the slowest backbone

        value, why = auto_subsample(cost_at, max(left, 1.0), SUBSAMPLE_MIN_PER_CLASS * classes / n_train)
        if value >= 1:
            return 1.0
    else:
        why = "--subsample" if options.subsample is not None else f"{space.path}: search.subsample"
    value = float(value)
    if value < 1:
        kept = subsample_positions(splits, value, 0, official)
        counts = {p: f"{len(kept[p]):,} of {len(getattr(splits, p)):,}" for p in ("train", "val", "test")}
        print_fn(
            f"subsample {value:g}: trials train on {counts['train']} training images and evaluate on {counts['val']} "
            f"validation and {counts['test']} test images (stratified by class{', the official test set whole' if 'test' in official else ''}): {why}; "
            "--subsample all uses every image"
        )
    return value


def _auto_image_size(space: SearchSpace, options: SearchOptions, data_settings, root: Path, print_fn):
    """``image_size: auto`` resolved: the space's first backbone's own size on a GPU or without a time budget, else
    the largest size at which the start points fit in :data:`nbtl.search.cost.AUTO_SHARE` of the budget, their cost
    measured here at 64 px and at the backbone's own size (:func:`nbtl.search.cost.auto_image_size`)."""

    backbone = space.backbones()[0]
    native = int(get_spec(backbone).input_size)
    budget = time_budget(options, space)
    resources = trial_resources(space, options)
    gpu = resources["gpu"]
    if gpu or budget is None:
        why = "the trials have a GPU" if gpu else "no --time-budget to fit"
        print_fn(f"image_size auto: {native}px, {backbone}'s own ({why})")
        return dataclasses.replace(data_settings, image_size=native)
    low = min(64, native)
    # the images counted at 64 px (a size auto may choose; its data file is kept for the next search)
    splits, _ = _data_file(options.data, dataclasses.replace(data_settings, image_size=low), root, print_fn)
    n_train, n_eval = len(splits.train), len(splits.val) + len(splits.test)
    threads = int(max(1, resources["cpu"]))
    speeds = measure_speed(backbone, low, threads), measure_speed(backbone, native, threads)
    configs = _start_configs(space, options, backbone, n_train)
    at_once = int(setting(options, space, "max_concurrent"))
    size, why = auto_image_size(
        native, configs, lambda s: scaled(*speeds, s), n_train, n_eval, budget - kept_seconds(budget, space), at_once
    )
    print_fn(f"image_size auto: {size}px: {why}")
    return dataclasses.replace(data_settings, image_size=size)


def _data_file(source, data_settings, root: Path, print_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The splits of ``source`` at one size, decoded once into a memory-mapped file under ``root``, which every
    trial maps (nothing large goes through Ray's object store); a search on the same data and settings reuses it."""

    try:
        # decoded a chunk at a time into the file (bounded memory: the driver never holds every image)
        folder, seconds = ensure_splits(source, data_settings, root)
        splits = open_splits(folder)
        meta, how = splits.meta, (f"decoded once in {seconds:.1f}s" if seconds is not None else "decoded earlier")
        how += f" (memory-mapped from {folder})"
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        # a derived file: without room for it the search still runs, its images sent through Ray's object store
        started = time.perf_counter()
        splits, extra = decode_splits(source, data_settings)
        meta = {"name": splits.train.name, "classes": list(splits.train.classes), **extra}
        how = (
            f"decoded in {time.perf_counter() - started:.1f}s, held in memory: no room for the data file in {root} "
            f"({error.strerror})"
        )
    official = meta["dataset"]["official"]
    kept = f"; official {' and '.join(p for p in ('val', 'test') if p in official)} kept" if official else ""
    print_fn(
        f"data {meta['name']}: {meta['dataset']['images']} images, {len(meta['classes'])} classes, "
        f"{data_settings.image_size}px (train {len(splits.train)} / val {len(splits.val)} / test "
        f"{len(splits.test)}{kept}), {how}"
    )
    return splits, meta


def handover_for(prepared: Prepared, options: SearchOptions, name: str):
    """What the finished search needs to keep its best weights and log (and register) its best model."""

    keep = options.keep_weights if options.keep_weights is not None else DEFAULTS["keep_weights"]
    by_size = prepared.splits_by_size or {prepared.splits.train.image_size: prepared.splits}
    examples = {
        size: (splits.test.images[0] if len(splits.test) else splits.train.images[0]).numpy()
        for size, splits in by_size.items()
    }
    return Handover(
        prepared.weights,
        list(prepared.splits.train.classes),
        dict(prepared.image_sizes),
        examples,
        int(keep),
        (options.register or name) if options.register_model else None,
        prepared.dataset_input,
    )


def trainable_for(prepared: Prepared, context):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(nbtl_trainable, splits=prepared.trial_splits(), weights=prepared.weights, context=context),
        prepared.resources,
    )
