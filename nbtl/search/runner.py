"""Run a search: data and weights loaded once, Ray Tune trials proposed by Optuna, stopped by ASHA,
tracked in MLflow, summarised as a pandas table and the best config."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nbtl import __version__
from nbtl.config import TrialConfig
from nbtl.errors import DiskFullError, NbtlError, disk_full_reason
from nbtl.models.export import KEEP_WEIGHTS
from nbtl.preflight import cluster_address, use_token_auth
from nbtl.safe_yaml import load_yaml
from nbtl.search.cluster import SearchError, check_resources, ray_session
from nbtl.search.lifecycle import (
    SearchInterrupted,
    full_disk_in_one_line,
    graceful_ctrl_c,
    remove_trial_checkpoints,
    resume_command,
    tell_how_to_resume,
)
from nbtl.search.results import METRIC, MODE, best_trial, rank_trials, trial_id_of
from nbtl.search.space import SearchSpace, dump_config
from nbtl.tracking import SOURCE_TAG, STOP_REASON_TAG

#: The search's own defaults; the data's (image size, split, seed, ...) are nbtl.data.settings.DataSettings'.
DEFAULTS = {"trials": 8, "max_concurrent": 2, "max_failures": 0, "keep_weights": KEEP_WEIGHTS}
SEARCH_STATE = "nbtl_search.json"
MAX_STATE_BYTES = 10_000_000  # nbtl_search.json is a few KB (options, ids, the space's text)
RESUME_TAG = "nbtl.resume_command"  # the parent run's: the exact `nbtl search --resume ...` of an unfinished search
OPTUNA_DB = "optuna.db"  # the search's Optuna study (SQLite, in its folder) unless --optuna-storage names another
PREFIX_CACHE = "prefix_cache"  # the frozen-prefix feature store of a search (nbtl.features), shared by its trials
RESULT_COLUMNS = [
    "epoch",
    "best_val_accuracy",
    "best_val_loss",
    "best_epoch",
    "test_accuracy",
    "test_macro_f1",
    "test_weighted_f1",
    "val_accuracy",
    "val_loss",
    "prefix_blocks",
    "prefix_cache_hit",
]

logger = logging.getLogger(__name__)


@dataclass
class SearchOptions:
    """What ``nbtl search`` takes besides the space; ``None`` means: as the space says, else the default."""

    data: str
    name: str | None = None
    trials: int | None = None
    max_concurrent: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    storage_path: str | None = None
    image_size: int | str | None = None  # pixels, or "native" (each backbone's own)
    per_class: int | None = None
    seed: int | None = None
    cpu: float | None = None
    gpu: float | None = None
    classes: str | None = None
    test_data: str | None = None  # --test-data: a second source holding the official test images
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    time_budget: float | None = None  # seconds; the whole search, data loading and start points included
    recommend: bool = True  # False: skip the 'recommend' start points (and the learned prior)
    keep_checkpoints: bool = False  # keep the trials' checkpoints after the search finished (--resume needs none then)
    keep_weights: int | None = None  # the best K trials keep their best-epoch weights (nbtl ensemble); None: DEFAULTS
    register: str | None = None  # the registered model's name; None: the search's name
    register_model: bool = True  # False (--no-register): the best model is logged on the parent run, not registered
    cache_size: int | None = None  # --cache-size: bytes the frozen-prefix store may take on disk; None: no limit
    optuna_storage: str | None = None  # --optuna-storage: the Optuna study's RDB URL; None: optuna.db in its folder
    weights: dict[str, str] = field(default_factory=dict)  # --weights: backbone -> a local weights file to use instead


@dataclass
class SearchResult:
    """What a finished search gives back, as Ray Tune's ``ResultGrid`` does.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per trial, best first (the one ranking of :mod:`nbtl.search.results`): its config, status,
        ``nbtl.source`` / stop reason, metrics and MLflow run id; also ``results.csv`` on the parent run.
    best : dict or None
        The best trial's row with its ``config``; None when no trial finished.
    tracking_uri, experiment_id, parent_run_id : str
        Where MLflow keeps the search (the parent run) and its trials (its child runs).
    experiment_path : str
        The search's results folder (Ray Tune's state, ``results.csv``, ``optuna.db``).
    model : dict or None
        The handed-over model (``logged``: its URIs), None when none was logged.
    """

    table: pd.DataFrame
    best: dict[str, Any] | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    experiment_path: str
    model: dict[str, Any] | None = None  # nbtl.search.handover.hand_over's: the logged (registered) best model

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The best trial's config (what ``nbtl train`` takes), None when no trial finished."""
        return None if self.best is None else dict(self.best["config"])

    @property
    def model_uri(self) -> str | None:
        """The best model's URI (``models:/NAME/VERSION`` when registered), for ``mlflow.pyfunc.load_model`` and
        ``nbtl predict``; None when no model was logged."""
        return None if not self.model else self.model["logged"].uri


def setting(options: SearchOptions, space: SearchSpace, key: str) -> Any:
    """``key`` from the command line, else the space, else the default (data settings: DataSettings')."""
    from nbtl.data.settings import SETTING_KEYS, DataSettings

    if key in SETTING_KEYS:
        return getattr(DataSettings.from_space(space, {k: getattr(options, k, None) for k in SETTING_KEYS}), key)
    value = getattr(options, key, None)
    if value is not None:
        return value
    return space.search.get(key, DEFAULTS.get(key))


def _sampler(space: SearchSpace, seed: int):
    import optuna

    spec = dict(space.search.get("sampler") or {})
    kind = spec.pop("type", "tpe")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    spec.setdefault("constant_liar", True)  # parallel trials do not all pick the same point
    return optuna.samplers.TPESampler(seed=seed, **spec)


def _scheduler(space: SearchSpace, budget: float | None = None):
    """Ray Tune's scheduler of the space: ASHA with rungs in epochs (the default), or in seconds of a trial's wall
    time (``unit: seconds``: a cheap frozen-prefix trial runs many epochs by the first rung, a full fine-tune few, so
    the costly ones go on only when promising; ``max_t`` defaults to the time budget), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = dict(space.search.get("scheduler") or {})
    if spec.pop("type", "asha") == "fifo":
        return FIFOScheduler()
    if spec.get("unit") == "seconds":
        top = spec.get("max_t") or budget
        if top is None:
            raise SearchError(
                f"{space.path}: search.scheduler unit: seconds needs max_t (seconds) or a --time-budget to end its rungs"
            )
        return ASHAScheduler(
            time_attr="time_total_s",
            metric=METRIC,
            mode=MODE,
            max_t=float(top),
            grace_period=float(spec["grace_period"]),
            reduction_factor=spec.get("reduction_factor", 2),
        )
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=METRIC,
        mode=MODE,
        max_t=space.max_epochs,
        grace_period=spec.get("grace_period", 1),
        reduction_factor=spec.get("reduction_factor", 2),
    )


def _storage(storage_path: str | None) -> Path:
    """The local or shared-file-system folder for Ray Tune's results, created if needed."""
    if storage_path and "://" in storage_path:
        raise SearchError(
            f"--storage-path {storage_path}: nbtl keeps its search state next to Ray Tune's, so give a "
            "folder; on a cluster, one on a file system every node mounts (NFS, EFS), e.g. /mnt/nbtl/results"
        )
    storage = Path(storage_path or "nbtl_results").resolve()
    try:
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SearchError(
            f"--storage-path {storage}: cannot create it ({error.strerror}); choose a writable folder"
        ) from None
    return storage


def _experiment_dir(storage: Path, name: str) -> str:
    """Claim the search's results folder ``storage/name``, or ``name_<time>[-k]`` when that is taken: created with
    an exclusive ``mkdir`` here, before any work, so two searches started at once with one name never share a
    folder (one would write the other's results table and delete its checkpoints)."""
    candidates = [name, f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"]
    candidates += [f"{candidates[1]}-{k}" for k in range(2, 1000)]
    for candidate in candidates:
        try:
            (storage / candidate).mkdir()
        except FileExistsError:
            continue
        return candidate
    raise SearchError(f"search {name!r}: {storage} holds 1000 folders of that name; give another --name")


def _full_config(values: dict[str, Any] | None) -> dict[str, Any]:
    """A trial's config with every default filled in; as given when it is invalid (such a trial failed, and
    its row still belongs in the table)."""
    if not values:
        return {}
    try:
        return TrialConfig.from_dict(values).to_dict()
    except NbtlError:
        return {**TrialConfig().to_dict(), **values}


def results_table(
    results, run_ids: dict[str, str], finished_at: dict[str, float] | None = None
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One row per trial (its id, MLflow run, status, config, best-epoch metrics and ``finished_at_s``,
    the seconds from the search's start to the trial's end), best first; and each trial's full config by trial id."""
    from nbtl.search.callbacks import reason_from_error_text

    rows, configs = [], {}
    for result in results:
        metrics = result.metrics or {}
        trial_id = trial_id_of(result)
        config = _full_config(result.config)
        configs[trial_id] = config
        epochs = int(metrics.get("epoch", 0) or 0)
        # STOPPED: ended before its last epoch, by the scheduler (ASHA) or the time budget (possibly before its first)
        planned = int(config.get("epochs") or TrialConfig().epochs)
        # an early-stopped trial (patience) ended on its own: FINISHED, not an ASHA stop
        status = (
            "FAILED"
            if result.error
            else ("STOPPED" if epochs < planned and not metrics.get("early_stopped") else "FINISHED")
        )
        row = {"trial_id": trial_id, "run_id": run_ids.get(trial_id, ""), "status": status}
        row.update({k: config.get(k) for k in (result.config or {})})
        row.update({k: metrics.get(k) for k in RESULT_COLUMNS})
        row["finished_at_s"] = (finished_at or {}).get(trial_id)
        row["error"] = reason_from_error_text(str(result.error))[:200] if result.error else ""
        rows.append(row)
    return rank_trials(pd.DataFrame(rows)), configs


@dataclass
class _Prepared:
    """What every trial of a search shares: decoded splits, pre-trained weights, resources."""

    dataset_name: str
    splits: Any  # at the first backbone's size: what the start points and the prior measure
    weights: dict[str, Any]
    resources: dict[str, float]
    data_settings: Any = None  # nbtl.data.settings.DataSettings: the images, their size, split and augmentation
    dataset_input: dict[str, Any] = field(default_factory=dict)  # nbtl.data.describe: logged as the runs' input
    image_sizes: dict[str, int] = field(default_factory=dict)  # each backbone's size (a trial's own image_size aside)
    splits_by_size: dict[int, Any] = field(default_factory=dict)  # one data file per size a trial may train at

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


def _prepare(space: SearchSpace, options: SearchOptions, print_fn: Callable[[str], None]) -> _Prepared:
    """Decode the data once, into the memory-mapped data file of :mod:`nbtl.data.arrayfile` (reused when it is
    there), and load each backbone's weights once, on the driver. The splits travel to the trials as the file's
    path, the weights through Ray's object store (``tune.with_parameters``): once per node, never per trial."""
    from nbtl.backbones import load_pretrained_state_dict
    from nbtl.data.arrayfile import DATA_DIR
    from nbtl.data.settings import AUTO, DataSettings

    # the one data-settings object: nbtl recommend and nbtl train read the same, so they mean the same images
    data_settings = DataSettings.from_space(
        space,
        {
            "image_size": options.image_size,
            "per_class": options.per_class,
            "seed": options.seed,
            "classes": options.classes,
            "test_data": getattr(options, "test_data", None),
        },
    )
    root = _storage(options.storage_path) / DATA_DIR
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
    resources = _trial_resources(space, options)
    return _Prepared(meta["name"], splits, weights, resources, data_settings, meta["input"], image_sizes, by_size)


def _trial_resources(space: SearchSpace, options: SearchOptions) -> dict[str, float]:
    """One trial's resources: the space's ``search.resources`` (default 1 CPU, no GPU), ``--cpu`` / ``--gpu`` over it."""
    resources = {**{"cpu": 1, "gpu": 0}, **(space.search.get("resources") or {})}
    if options.cpu is not None:
        resources["cpu"] = options.cpu
    if options.gpu is not None:
        resources["gpu"] = options.gpu
    return resources


def _auto_image_size(space: SearchSpace, options: SearchOptions, data_settings, root: Path, print_fn):
    """``image_size: auto`` resolved: the space's first backbone's own size on a GPU or without a time budget, else
    the largest size at which the start points fit in :data:`nbtl.search.cost.AUTO_SHARE` of the budget, their cost
    measured here at 64 px and at the backbone's own size (:func:`nbtl.search.cost.auto_image_size`)."""
    from nbtl.backbones import get_spec
    from nbtl.config import TrialConfig
    from nbtl.search.cost import auto_image_size, measure_speed, scaled
    from nbtl.search.start import conventional_config, probe_config

    backbone = space.backbones()[0]
    native = int(get_spec(backbone).input_size)
    budget = _time_budget(options, space)
    resources = _trial_resources(space, options)
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
    fixed = {p.name: p.value for p in space.resolved(n_train).parameters if p.fixed and p.name in TrialConfig.keys()}
    keep = {k: v for k, v in fixed.items() if k in ("epochs", "batch_size")}
    names = [n for n in space.start_points if options.recommend or n != "recommend"]
    configs = [
        TrialConfig.from_dict({**(probe_config if n == "probe" else conventional_config)(backbone), **keep})
        for n in names  # a recommended config costs about what the recipe does
    ]
    at_once = int(setting(options, space, "max_concurrent"))
    size, why = auto_image_size(
        native, configs, lambda s: scaled(*speeds, s), n_train, n_eval, budget - _kept(budget, space), at_once
    )
    print_fn(f"image_size auto: {size}px: {why}")
    return dataclasses.replace(data_settings, image_size=size)


def _data_file(source, data_settings, root: Path, print_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The splits of ``source`` at one size, decoded once into a memory-mapped file under ``root``, which every
    trial maps (nothing large goes through Ray's object store); a search on the same data and settings reuses it."""
    from nbtl.data.arrayfile import decode_splits, ensure_splits, open_splits

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


def _handover(prepared: _Prepared, options: SearchOptions, name: str):
    """What the finished search needs to keep its best weights and log (and register) its best model."""
    from nbtl.search.handover import Handover

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


def _trainable(prepared: _Prepared, context):
    from ray import tune

    from nbtl.search.trainable import nbtl_trainable

    return tune.with_resources(
        tune.with_parameters(nbtl_trainable, splits=prepared.trial_splits(), weights=prepared.weights, context=context),
        prepared.resources,
    )


def _time_budget(options: SearchOptions, space: SearchSpace) -> float | None:
    from nbtl.search.space import parse_duration

    if options.time_budget is not None:
        return float(options.time_budget)
    return parse_duration(space.search["time_budget"]) if "time_budget" in space.search else None


def _trial_count(options: SearchOptions, space: SearchSpace, budget: float | None) -> int:
    """Trials to run: ``--trials``, else the space's; with a time budget from the command line and no
    ``--trials``, as many as fit (-1, Ray Tune's "until stopped")."""
    if options.trials is not None:
        return int(options.trials)
    if budget is not None and options.time_budget is not None:
        return -1
    return int(setting(options, space, "trials"))


def _with_prior(
    sampler,
    space: SearchSpace,
    task,
    n_classes: int,
    seed: int,
    print_fn: Callable[[str], None],
    prepared: _Prepared | None = None,
):
    """The sampler, wrapped in the learned prior (:mod:`nbtl.search.prior`) when the space asks for it
    (``search.prior.enabled``, default on for TPE) and the task's fit was measured; with ``search.prior.cost_aware``
    its candidates are ranked by expected gain per second (:class:`nbtl.search.cost.CostModel`, each backbone's
    speed measured here)."""
    spec = dict(space.search.get("prior") or {})
    kind = (space.search.get("sampler") or {}).get("type", "tpe")
    if not spec.get("enabled", kind == "tpe") or task is None:
        return sampler
    from nbtl.search.prior import build_prior

    extra = {k: spec[k] for k in ("n_candidates",) if k in spec}
    cost = None
    if spec.get("cost_aware") and prepared is not None:
        from nbtl.search.cost import CostModel, measure_speed

        threads = int(max(1, prepared.resources.get("cpu", 1)))
        sizes = prepared.image_sizes or dict.fromkeys(space.backbones(), int(prepared.splits.train.image_size))
        speeds = {b: measure_speed(b, size, threads) for b, size in sizes.items()}
        n_eval = len(prepared.splits.val) + len(prepared.splits.test)
        cost = CostModel(speeds, len(prepared.splits.train), n_eval, cached=space.prefix_cache)
    prior = build_prior(
        space, sampler, {b: task.row(b) for b in task.backbones}, n_classes, seed=seed, cost=cost, **extra
    )
    if prior is None:
        return sampler
    ranked = (
        "expected gain per second (the recommender's accuracy, a cost model measured here)"
        if cost
        else ("the recommender fitted on the meta-dataset")
    )
    print_fn(
        f"learned prior: Optuna's proposals are ranked by {ranked} ({getattr(prior, 'n_candidates', '?')} "
        "candidates a trial)"
    )
    return prior


@dataclass
class _Plan:
    """What a search decides before its MLflow parent run exists (so that a setting that cannot work
    fails with no run left behind): names, budget, start points, the searcher and the scheduler."""

    name: str
    seed: int
    budget: float | None
    trials: int
    max_concurrent: int
    experiment_dir: str
    experiment_path: Path
    starts: Any
    searcher: Any
    scheduler: Any
    reevaluation: Any
    remaining: float | None
    optuna_storage: str = ""  # the database the Optuna study is written to (its study name: experiment_dir)
    expected: int | None = None  # about how many trials the time budget affords (nbtl.search.cost), None: unknown


def _plan(
    space: SearchSpace,
    options: SearchOptions,
    prepared: _Prepared,
    storage: Path,
    started: float,
    print_fn: Callable[[str], None],
) -> _Plan:
    from ray.tune.search.optuna import OptunaSearch

    from nbtl.search.start import start_points
    from nbtl.search.study_store import open_rdb

    name = options.name or space.name
    seed = int(setting(options, space, "seed"))
    budget = _time_budget(options, space)
    experiment_dir = _experiment_dir(storage, name)
    if experiment_dir != name:
        print_fn(
            f"results folder {storage / name} is taken (another search of that name): this one writes to {experiment_dir}"
        )
    names = [n for n in space.start_points if options.recommend or n != "recommend"]
    starts = start_points(
        space,
        names,
        data=options.data,
        train=prepared.splits.train,
        seed=seed,
        image_size=int(prepared.splits.train.image_size),
        per_class=setting(options, space, "per_class"),
        classes=options.classes,
        say=print_fn,
        weights=options.weights,
    )
    setup = time.perf_counter() - started
    _refuse_a_budget_spent_on_setup(budget, setup, space, storage / experiment_dir, "recommend" in names)
    expected = None
    if budget is not None:
        expected = _say_what_the_budget_affords(
            space, prepared, starts, budget - setup - _kept(budget, space), setup, options, print_fn
        )
    warm_start = list(options.warm_start or []) + starts.points + list(space.search.get("points_to_evaluate") or [])
    sampler = _with_prior(
        _sampler(space, seed), space, starts.task, len(prepared.splits.train.classes), seed, print_fn, prepared
    )
    optuna_storage = options.optuna_storage or f"sqlite:///{storage / experiment_dir / OPTUNA_DB}"
    searcher = OptunaSearch(
        space=space.define_by_run(seed),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        points_to_evaluate=warm_start or None,
    )
    open_rdb(optuna_storage)  # a database Optuna cannot open ends the search here, before any trial
    print_fn(
        f"Optuna study {experiment_dir!r} in {optuna_storage} (optuna-dashboard {optuna_storage}, or "
        f"optuna.load_study(study_name={experiment_dir!r}, storage={optuna_storage!r}))"
    )
    reevaluation = None
    top = int((space.search.get("reevaluate") or {}).get("top", 0))
    if top >= 2:
        from nbtl.search.reevaluate import Reevaluation

        reevaluation = Reevaluation(
            top,
            seed,
            prepared.trial_splits(),
            prepared.weights,
            prepared.data_settings.augmentation,
            str(storage / experiment_dir / PREFIX_CACHE),
            prepared.resources,
            say=print_fn,
            deadline=None if budget is None else started + budget - _wrap_up(budget),
            image_sizes=dict(prepared.image_sizes),
        )
    remaining = None
    if budget is not None:
        remaining = max(1.0, budget - (time.perf_counter() - started) - _kept(budget, space))
    return _Plan(
        name,
        seed,
        budget,
        _trial_count(options, space, budget),
        int(setting(options, space, "max_concurrent")),
        experiment_dir,
        storage / experiment_dir,
        starts,
        searcher,
        _scheduler(space, budget),
        reevaluation,
        remaining,
        optuna_storage,
        expected,
    )


def _run_params(plan: _Plan, space: SearchSpace, options: SearchOptions, prepared: _Prepared) -> dict[str, Any]:
    """The parent run's params: the search's settings as it ran."""
    return {
        "space": space.path,
        "data": options.data,
        **prepared.data_settings.to_params(),
        "trials": plan.trials if plan.trials > 0 else "until the time budget",
        "max_concurrent": plan.max_concurrent,
        "cpu_per_trial": prepared.resources["cpu"],
        "gpu_per_trial": prepared.resources["gpu"],
        "sampler": json.dumps(space.search.get("sampler") or {"type": "tpe"}),
        "scheduler": json.dumps(space.search.get("scheduler") or {"type": "asha"}),
        "time_budget_s": plan.budget,
        "start_points": ",".join(plan.starts.labels) or "none",
        **({"weights": json.dumps(options.weights, sort_keys=True)} if options.weights else {}),
    }


def _write_state(plan: _Plan, tracker, space: SearchSpace, options: SearchOptions, started: float) -> None:
    """``nbtl_search.json``: what ``--resume`` needs besides Ray Tune's own experiment state."""
    plan.experiment_path.mkdir(parents=True, exist_ok=True)
    (plan.experiment_path / SEARCH_STATE).write_text(
        json.dumps(
            {
                "name": plan.name,
                "parent_run_id": tracker.parent_run_id,
                "experiment_id": tracker.experiment_id,
                "experiment_name": tracker.experiment_name,
                "tracking_uri": tracker.tracking_uri,
                "space_path": space.path,
                "space_source": space.source,
                "options": options.__dict__,
                "started": started,
                "version": __version__,
                # wall clock of the search's start, the zero of results.csv's finished_at_s
                "started_wall": time.time() - (time.perf_counter() - started),
            },
            indent=2,
            default=str,
        )
    )


def _tuner(plan: _Plan, prepared: _Prepared, context, space: SearchSpace, options: SearchOptions, started: float):
    from ray import tune

    from nbtl.search.callbacks import SearchCallback

    callback = SearchCallback(
        str(plan.experiment_path),
        plan.trials,
        space.max_epochs,
        budget=plan.budget,
        started=time.time() - (time.perf_counter() - started),
        max_failures=int(setting(options, space, "max_failures")),
        starts=list(zip(plan.starts.labels, plan.starts.points, strict=True)),
        scheduler_stops=type(plan.scheduler).__name__ != "FIFOScheduler",
        expected=plan.expected,
    )
    from nbtl.search.study_store import StudyMirror

    mirror = StudyMirror(plan.optuna_storage, plan.experiment_dir, space.sample)
    return tune.Tuner(
        _trainable(prepared, context),
        tune_config=tune.TuneConfig(
            search_alg=plan.searcher,
            scheduler=plan.scheduler,
            num_samples=plan.trials,
            max_concurrent_trials=plan.max_concurrent,
            time_budget_s=plan.remaining,
            # a trial's worker is kept for the next one (Ray Tune waits for its thread to end, else starts a new
            # one): a fresh worker spends seconds of CPU importing torch, MLflow and nbtl before its first step
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.experiment_dir,
            storage_path=str(plan.experiment_path.parent),
            callbacks=[callback, mirror],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=int(setting(options, space, "max_failures"))),
            # 2, not 1: a driver killed between Ray Tune deleting the older checkpoint and saving its experiment
            # state would leave that state pointing at a deleted checkpoint (--resume failed so, 1 run in 5)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def run_search(space: SearchSpace, options: SearchOptions, print_fn: Callable[[str], None] = print) -> SearchResult:
    """Run the search described by ``space`` on ``options.data``; see ``nbtl search --help``.

    Everything that can be refused (data, cluster, resources, sampler, scheduler) is checked before the
    MLflow parent run is created; once it exists, any error or Ctrl-C ends it and its open trial runs
    (KILLED on Ctrl-C, which also prints the ``--resume`` command and raises :class:`SearchInterrupted`).
    The Ray instance the search started is shut down when it ends.
    """
    from nbtl.preflight import check_ray_address, check_tracking_uri

    check_tracking_uri(options.tracking_uri)  # the services, in seconds: before any image is decoded or Ray starts
    check_ray_address(options.address)
    use_token_auth(options.address)
    started = time.perf_counter()
    prepared = _prepare(space, options, print_fn)
    space = space.resolved(len(prepared.splits.train))
    storage = _storage(options.storage_path)
    # Ray before MLflow: a cluster that cannot be joined, or resources no node has, leave no run behind
    with ray_session(options.address) as ray_address:
        check_resources(prepared.resources)
        plan = _plan(space, options, prepared, storage, started, print_fn)
        from nbtl.search.trainable import TrialContext
        from nbtl.tracking import SearchTracker, search_experiment

        tracker = SearchTracker(options.tracking_uri, plan.name, experiment=search_experiment(plan.name))
        tags = {
            "nbtl.dataset": prepared.dataset_name,
            "nbtl.space": space.name,
            "nbtl.experiment_path": str(plan.experiment_path),
            "nbtl.ray_address": cluster_address(options.address) or "embedded",
            "nbtl.ray_gcs_address": ray_address,
            "nbtl.optuna_study": plan.experiment_dir,
            "nbtl.optuna_storage": plan.optuna_storage,
        }
        resume = resume_command(plan.experiment_dir, options.storage_path, options.address, options.tracking_uri)
        tags[RESUME_TAG] = resume  # set at the start: a driver killed outright leaves a run that says how to go on
        with (
            tell_how_to_resume(print_fn, resume),
            tracker.search_run(_run_params(plan, space, options, prepared), tags) as parent_run_id,
        ):
            tracker.log_text(space.source or dump_config({}), "search_space.yaml")
            tracker.log_dataset(prepared.dataset_input)
            _write_state(plan, tracker, space, options, started)
            print_fn(
                f"MLflow: experiment {tracker.experiment_name!r} ({tracker.tracking_uri}), parent run {parent_run_id}"
            )
            context = TrialContext(
                tracking_uri=tracker.tracking_uri,
                experiment_id=tracker.experiment_id,
                parent_run_id=parent_run_id,
                augmentation=prepared.data_settings.augmentation,
                tags={"nbtl.search": plan.name, "nbtl.dataset": prepared.dataset_name, "nbtl.version": __version__},
                prefix_cache_dir=str(plan.experiment_path / PREFIX_CACHE),
                storage_dir=str(plan.experiment_path),
                seed=plan.seed,
                dataset=prepared.dataset_input,
                cache_prefix=space.prefix_cache,
                prefix_cache_bytes=options.cache_size,
                image_sizes=dict(prepared.image_sizes),
            )
            if plan.starts.labels:
                print_fn(
                    f"start points, run first: {', '.join(plan.starts.labels)}"
                    + (f" ({plan.starts.seconds:.1f}s to find)" if plan.starts.seconds >= 1 else "")
                )
            tuner = _tuner(plan, prepared, context, space, options, started)
            count = f"{plan.trials} trials" if plan.trials > 0 else "trials until the time budget ends"
            print_fn(
                f"search {plan.name!r}: {count}, up to {plan.max_concurrent} at once, "
                + (
                    f"time budget {_duration(plan.budget)} ({_duration(plan.remaining)} left for trials), "
                    if plan.budget
                    else ""
                )
                + f"resources per trial {prepared.resources}, results in {plan.experiment_path}"
            )
            return _fit(
                tuner,
                tracker,
                print_fn,
                space,
                plan.experiment_path,
                started,
                plan.budget,
                plan.reevaluation,
                options.keep_checkpoints,
                _handover(prepared, options, plan.name),
                resume=resume,
            )


#: The fewest seconds a time budget must leave for trials after the setup: below that no trial can finish (a Ray
#: worker starts, imports torch and builds its model in about 5-10 s on a CPU before its first step).
MIN_TRIAL_S = 10.0
#: What the refusal suggests leaving for trials: a minute, room for a few cheap ones.
SUGGESTED_TRIAL_S = 60.0


def _say_what_the_budget_affords(
    space: SearchSpace, prepared: _Prepared, starts, left: float, setup: float, options, print_fn
) -> int | None:
    """One line before the trials: the setup's seconds, what a trial costs here (:mod:`nbtl.search.cost`, measured
    on this machine for the space's first backbone), and about how many trials the time left affords. CPU trials
    only: a GPU's speed is not modelled."""
    from nbtl.config import TrialConfig
    from nbtl.errors import ConfigError
    from nbtl.search.cost import measure_speed, trial_seconds

    if prepared.resources.get("gpu"):
        return None
    backbone = space.backbones()[0]
    size = prepared.image_sizes.get(backbone, int(prepared.splits.train.image_size))
    measured = time.perf_counter()
    speed = measure_speed(backbone, size, threads=int(max(1, prepared.resources.get("cpu", 1))))
    measured = time.perf_counter() - measured
    n_train, n_eval = len(prepared.splits.train), len(prepared.splits.val) + len(prepared.splits.test)
    keys = set(TrialConfig.keys())
    fixed = {p.name: p.value for p in space.resolved(n_train).parameters if p.fixed and p.name in keys}

    def cost(values: dict) -> float:
        try:
            config = TrialConfig.from_dict({**fixed, **{k: v for k, v in values.items() if k in keys}})
        except ConfigError:
            config = TrialConfig(epochs=int(fixed.get("epochs", TrialConfig.epochs)))
        return trial_seconds(config, speed, n_train, n_eval, cached=space.prefix_cache)

    blocks = len(speed.block_share)
    full, half = cost({"backbone": backbone}), cost({"backbone": backbone, "freeze_blocks": blocks // 2})
    at_once = int(setting(options, space, "max_concurrent"))
    first = sum(cost(point) for point in starts.points) / at_once
    more = max(0, int((left - first - measured) * at_once / max(half, 1e-3)))
    points = f"the {len(starts.points)} start point(s) (about {_duration(first)}) and " if starts.points else ""
    print_fn(
        f"setup took {_duration(setup)}; a trial of {backbone} at {size}px costs about {_duration(full)} here "
        f"fine-tuning every block, {_duration(half)} with half of them frozen (measured in {measured:.1f}s, if it "
        f"runs all its epochs): the {_duration(left)} left for trials afford {points}about {more} more, "
        f"{at_once} at a time"
    )
    return len(starts.points) + more


def _kept(budget: float, space: SearchSpace) -> float:
    """Seconds of ``budget`` not for trials: the wrap-up, and the re-evaluation's share when the space asks for one."""
    from nbtl.search.reevaluate import BUDGET_SHARE

    reevaluate = int((space.search.get("reevaluate") or {}).get("top", 0)) >= 2
    return _wrap_up(budget) + (BUDGET_SHARE * budget if reevaluate else 0.0)


def _refuse_a_budget_spent_on_setup(
    budget: float | None, setup: float, space: SearchSpace, claimed: Path, recommended: bool
) -> None:
    """One :class:`SearchError` when the setup (data, start points, Ray) left less than :data:`MIN_TRIAL_S` of the
    time budget for trials, naming what it took and a budget that leaves a minute; the results folder the search
    claimed is given back. Nothing is logged to MLflow yet."""
    if budget is None or budget - setup - _kept(budget, space) >= MIN_TRIAL_S:
        return
    suggested = 60.0
    while suggested - setup - _kept(suggested, space) < SUGGESTED_TRIAL_S:
        suggested += 60.0
    shutil.rmtree(claimed, ignore_errors=True)
    raise SearchError(
        f"--time-budget {_duration(budget)}: the setup (data, start points, Ray) took {_duration(setup)} and "
        f"{_duration(_kept(budget, space))} is kept for the wrap-up, which leaves no time for a trial; give at least "
        f"--time-budget {_duration(suggested)} (a minute for trials)"
        + (", or --no-recommend for a shorter setup" if recommended else "")
    )


def _wrap_up(budget: float) -> float:
    """Seconds of a time budget kept for after the trials (Ray's shutdown, the results table, plots and
    artifacts), so the whole search ends within it: 10 %, between 5 and 30 s."""
    return min(30.0, max(5.0, 0.1 * budget))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _fit(
    tuner,
    tracker,
    print_fn: Callable[[str], None],
    space: SearchSpace,
    experiment_path: Path,
    started: float,
    budget: float | None = None,
    reevaluation=None,
    keep_checkpoints: bool = False,
    handover=None,
    resume: str | None = None,
) -> SearchResult:
    """Run the trials; on Ctrl-C let Ray Tune stop them and save the experiment for ``--resume``, then raise
    :class:`SearchInterrupted` (the caller's run context ends the runs KILLED). A trial that finds a disk full
    stops the search the same way (:meth:`SearchCallback.stop_on_full_disk`), and :class:`DiskFullError` says
    so in one line with ``resume``, the command that continues the search once there is room (the caller's run
    context ends the parent FAILED with it)."""
    from nbtl.search.callbacks import ACTIVE, Session

    key = str(experiment_path)
    ACTIVE[key] = session = Session(tracker, print_fn)
    try:
        with graceful_ctrl_c() as interrupt, full_disk_in_one_line():
            results = tuner.fit()
    except Exception as error:
        if session.disk_full is None and disk_full_reason(error) is None:
            raise
        raise _disk_full(session.disk_full or disk_full_reason(error), experiment_path, resume) from error
    finally:
        ACTIVE.pop(key, None)
    if session.disk_full is not None:
        raise _disk_full(session.disk_full, experiment_path, resume)
    if interrupt.requested:
        raise SearchInterrupted(f"search {experiment_path.name} interrupted")
    result = finish_search(
        tracker, results, session.callback, space, experiment_path, started, budget, reevaluation, handover, print_fn
    )
    if not keep_checkpoints:
        freed = remove_trial_checkpoints(experiment_path)
        logger.info("removed the trial checkpoints of %s (%.1f MB)", experiment_path, freed / 1e6)
    return result


def _disk_full(reason: str, experiment_path: Path, resume: str | None) -> DiskFullError:
    try:
        free = f" ({shutil.disk_usage(experiment_path).free / 2**20:.1f} MiB free there)"
    except OSError:
        free = ""
    return DiskFullError(
        f"the disk is full: {reason.removeprefix('OSError: ')}; search results in {experiment_path}{free}: free space "
        f"there, or move that folder to a disk with room and pass --storage-path, then continue the search with "
        f"{resume or 'nbtl search --resume'} (its finished trials and state are kept)"
    )


def resume_search(
    name: str,
    storage_path: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    print_fn: Callable[[str], None] = print,
    keep_checkpoints: bool = False,
) -> SearchResult:
    """Continue an interrupted search (``nbtl search --resume NAME``) to its requested trial count.

    Ray Tune restores the experiment from ``STORAGE/NAME``: finished trials stay finished, trials that
    were cut off continue from their last epoch checkpoint (their MLflow runs are re-attached, not
    duplicated), and Optuna's sampler continues from its saved state. The search's MLflow parent run
    is continued. Restoring unpickles Ray's experiment state, so resume only searches you ran.
    """
    storage = Path(storage_path or "nbtl_results").resolve()
    experiment_path = storage / name
    state_file = experiment_path / SEARCH_STATE
    if not state_file.exists():
        known = sorted(p.parent.name for p in storage.glob(f"*/{SEARCH_STATE}")) if storage.exists() else []
        raise SearchError(
            f"--resume {name}: no search state at {state_file}; searches here: "
            f"{', '.join(known) or 'none'} (use --storage-path for another results folder)"
        )
    if state_file.is_file() and state_file.stat().st_size > MAX_STATE_BYTES:
        raise SearchError(
            f"{state_file}: {state_file.stat().st_size:,} bytes, over the {MAX_STATE_BYTES:,} of a search's state; "
            "it is not one nbtl wrote: resume another search"
        )
    state = json.loads(state_file.read_text())
    options = SearchOptions(**{k: v for k, v in state["options"].items() if k in SearchOptions.__dataclass_fields__})
    options.address = address if address is not None else options.address
    from nbtl.preflight import check_ray_address, check_tracking_uri

    check_tracking_uri(tracking_uri or state["tracking_uri"])  # in seconds: before any image is decoded or Ray starts
    check_ray_address(options.address)
    use_token_auth(options.address)
    from nbtl.search.space import parse_space

    space = parse_space(
        load_yaml(state["space_source"], f"the space saved in {experiment_path / SEARCH_STATE}"),
        where=f"{state_file} (space of {state['space_path']})",
        source=state["space_source"],
    )
    started = time.perf_counter()
    prepared = _prepare(space, options, print_fn)
    with ray_session(options.address):
        from ray import tune

        from nbtl.search.trainable import TrialContext
        from nbtl.tracking import SearchTracker

        check_resources(prepared.resources)
        if not tune.Tuner.can_restore(str(experiment_path)):
            raise SearchError(
                f"--resume {name}: {experiment_path} holds no Ray Tune experiment state yet "
                "(the search stopped before its first trial); start it again instead"
            )
        # searches of nbtl 0.1.0 and before named their experiment after the search itself
        tracker = SearchTracker(
            tracking_uri or state["tracking_uri"], state["name"], experiment=state.get("experiment_name", state["name"])
        )
        resume = resume_command(name, storage_path, address, tracking_uri)
        with tell_how_to_resume(print_fn, resume), tracker.resumed_run(state["parent_run_id"]) as parent_run_id:
            parent_tags = tracker.client.get_run(parent_run_id).data.tags
            resumed = int(parent_tags.get("nbtl.resumed", 0)) + 1
            # a search a full disk stopped (DiskFullError): its trials that failed on it run again, from their
            # last checkpoint (Ray Tune resumes errored trials all or none: one that failed otherwise, e.g.
            # diverged, runs again too, and fails as before)
            after_full_disk = parent_tags.get("nbtl.error", "").startswith(DiskFullError.__name__)
            tracker.set_tags({"nbtl.resumed": resumed})
            context = TrialContext(
                tracking_uri=tracker.tracking_uri,
                experiment_id=tracker.experiment_id,
                parent_run_id=parent_run_id,
                augmentation=prepared.data_settings.augmentation,
                tags={"nbtl.search": state["name"], "nbtl.dataset": prepared.dataset_name, "nbtl.version": __version__},
                prefix_cache_dir=str(experiment_path / PREFIX_CACHE),
                storage_dir=str(experiment_path),
                seed=int(setting(options, space, "seed")),
                dataset=prepared.dataset_input,
                cache_prefix=space.prefix_cache,
                prefix_cache_bytes=options.cache_size,
                image_sizes=dict(prepared.image_sizes),
            )
            tuner = tune.Tuner.restore(
                str(experiment_path),
                _trainable(prepared, context),
                resume_unfinished=True,
                resume_errored=after_full_disk,
                restart_errored=False,
            )
            print_fn(f"resuming search {state['name']!r} from {experiment_path} (MLflow parent run {parent_run_id})")
            return _fit(
                tuner,
                tracker,
                print_fn,
                space,
                experiment_path,
                started,
                keep_checkpoints=keep_checkpoints or bool(options.keep_checkpoints),
                handover=_handover(prepared, options, state["name"]),
                resume=resume,
            )


def _trial_histories(results) -> dict[str, pd.DataFrame]:
    histories = {}
    for result in results:
        try:
            frame = result.metrics_dataframe
        except Exception:  # a trial that never reported has no progress file
            frame = None
        if frame is not None and not frame.empty and "epoch" in frame:
            trial_id = trial_id_of(result)
            histories[trial_id] = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return histories


def _log_plots(
    tracker, results, table: pd.DataFrame, configs, completed: list[str], space: SearchSpace, experiment_path: Path
) -> None:
    """The parent run's figures; a plot that cannot be drawn (too few trials) is skipped."""
    import matplotlib.pyplot as plt

    from nbtl.search import plots

    sources = dict(zip(table["trial_id"], table["source"], strict=True)) if "source" in table else {}
    figures = {"val_accuracy_per_trial.png": plots.accuracy_curves(_trial_histories(results), sources=sources)}
    by_id = table.set_index("trial_id")[METRIC].to_dict() if not table.empty else {}
    order = [t for t in completed if t in by_id] + [t for t in by_id if t not in completed]
    figures["best_accuracy_vs_trials.png"] = plots.best_so_far([by_id[t] for t in order])
    if not table.empty and "finished_at_s" in table:
        figures["best_accuracy_vs_time.png"] = plots.best_so_far_over_time(table["finished_at_s"], table[METRIC])
    importance = plots.param_importances(plots.completed_study(table, configs, space)) if not table.empty else None
    if importance is not None:
        figures["param_importance.png"] = importance
    for file, figure in figures.items():
        tracker.log_figure(figure, file)
        figure.savefig(experiment_path / file, dpi=100)
        plt.close(figure)


SUMMARY_ROWS = 5


def search_summary(name: str, table: pd.DataFrame, model=None) -> str:
    """The parent run's description, in markdown: the top trials, the model handed over and how to use it."""
    lines = [f"## nbtl search `{name}`", ""]
    if table.empty:
        return "\n".join([*lines, "No trial ran."])
    columns = [c for c in ("trial_id", "source", "stop_reason", METRIC, "test_accuracy") if c in table.columns]
    columns += [c for c in ("backbone", "transfer_blocks", "freeze_blocks", "lr", "head") if c in table.columns]

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:.4g}"
        return str(value)

    shown = table.head(SUMMARY_ROWS)
    lines += [
        f"Top {len(shown)} of {len(table)} trials (best first; every trial in `results.csv`):",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        *("| " + " | ".join(cell(row[c]) for c in columns) + " |" for _, row in shown.iterrows()),
    ]
    if model is not None:
        logged = model["logged"]
        uri = logged.uri
        lines += [
            "",
            f"Model: `{uri}`",
            "",
            "```bash",
            f"nbtl predict {uri} IMAGES...",
            "```",
            "",
            "```python",
            "import mlflow",
            f"model = mlflow.pyfunc.load_model({uri!r})",
            "```",
        ]
    return "\n".join(lines)


def finish_search(
    tracker,
    results,
    callback,
    space: SearchSpace,
    experiment_path: Path,
    started: float,
    budget: float | None = None,
    reevaluation=None,
    handover=None,
    print_fn: Callable[[str], None] = print,
) -> SearchResult:
    """Write the results table, best config, plots and summary metrics to the parent run; end it.
    ``reevaluation(table, configs) -> table`` (:mod:`nbtl.search.reevaluate`) may re-rank the best trials first.
    With ``handover`` (:class:`nbtl.search.handover.Handover`) the best trials keep their best-epoch weights
    on their runs and the best one's model is logged on the parent run (and registered)."""
    run_ids = {r.data.tags.get("nbtl.trial_id"): r.info.run_id for r in tracker.child_runs()}
    completed = callback.completed if callback is not None else []
    finished_at = dict(callback.finished_at) if callback is not None else {}
    if callback is not None:  # trials the time budget (or an interrupt) cut off end now
        now = round(callback.elapsed(), 2)
        finished_at.update({trial_id_of(r): now for r in results if trial_id_of(r) not in finished_at})
    table, configs = results_table(
        results, {**run_ids, **(callback.run_ids if callback is not None else {})}, finished_at
    )
    if reevaluation is not None and not table.empty:
        table = reevaluation(table, configs)
    # Trials the time budget cut off: Ray stopped them without telling the callback, and their workers leave
    # the run to the driver (nbtl.search.trainable). An interrupted search never gets here.
    for run in tracker.child_runs():
        if run.info.status == "RUNNING":
            trial_id = run.data.tags.get("nbtl.trial_id", "")
            labels = {STOP_REASON_TAG: "time_budget"}
            if callback is not None:
                callback.stop_reasons[trial_id] = "time_budget"
                labels[SOURCE_TAG] = callback.sources.get(trial_id, "sampler")
            tracker.close_trial(
                trial_id, run.info.run_name, {}, "FINISHED", tags={"nbtl.stopped_early": "true", **labels}
            )
    if not table.empty:  # where each trial came from and why it ended, as its run's tags say
        sources = callback.sources if callback is not None else {}
        reasons = callback.stop_reasons if callback is not None else {}
        fallback = {"FAILED": "failed", "FINISHED": "finished", "STOPPED": "time_budget"}
        table["source"] = [sources.get(t, "sampler") for t in table["trial_id"]]
        table["stop_reason"] = [
            reasons.get(t) or fallback.get(s, "") for t, s in zip(table["trial_id"], table["status"])
        ]
    best = None
    chosen = best_trial(table)  # the one ranking (nbtl.search.results), as every reader of the results
    if chosen is not None:
        row = chosen.to_dict()
        config = configs[row["trial_id"]]
        best = {
            "trial_id": row["trial_id"],
            "run_id": row["run_id"],
            "config": config,
            **{k: row.get(k) for k in RESULT_COLUMNS},
        }
        tracker.log_text(dump_config(config), "best_config.yaml")
        (experiment_path / "best_config.yaml").write_text(dump_config(config))
        tracker.set_tags({"nbtl.best_run_id": row["run_id"], "nbtl.best_trial_id": row["trial_id"]})
        tracker.log_metrics({"best_val_accuracy": row[METRIC], "best_test_accuracy": row["test_accuracy"]})
    csv = table.to_csv(index=False)
    tracker.log_text(csv, "results.csv")
    (experiment_path / "results.csv").write_text(csv)
    _log_plots(tracker, results, table, configs, completed, space, experiment_path)
    model = None
    if handover is not None and best is not None:
        from nbtl.search.handover import hand_over

        model = hand_over(tracker, results, table, configs, handover, print_fn)
    tracker.set_note(search_summary(experiment_path.name, table, model))
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    wall_time = time.perf_counter() - started
    tracker.log_metrics(
        {
            "trials_finished": counts.get("FINISHED", 0) + counts.get("STOPPED", 0),
            "trials_failed": counts.get("FAILED", 0),
            "wall_time_s": wall_time,
            **({"time_budget_s": budget, "time_budget_used": wall_time / budget} if budget else {}),
        }
    )
    tracker.end("FINISHED")
    return SearchResult(
        table, best, tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id, str(experiment_path), model
    )
