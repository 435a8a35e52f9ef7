"""A search's options and their precedence (the command line, then the space, then the default), the sampler and
scheduler a space names, the search's folders and time, and the Optuna study's database: the settings every room
of a search reads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nbtl.data.settings import SETTING_KEYS, DataSettings
from nbtl.models import KEEP_WEIGHTS
from nbtl.search.cluster import SearchError
from nbtl.search.reevaluate import BUDGET_SHARE
from nbtl.search.space import SearchSpace

PREFIX_CACHE = "prefix_cache"  # the frozen-prefix feature store of a search (nbtl.features), shared by its trials

#: What a run keeps by default; the search's settings' defaults are SearchSettings' (nbtl.search.settings), the data's
#: (image size, split, seed, ...) DataSettings' (nbtl.data.settings).
DEFAULTS = {"keep_weights": KEEP_WEIGHTS}


@dataclass(kw_only=True)
class RunOptions:
    """Where a study runs, what it is tracked as, and what each of its trials holds: what ``nbtl search`` and
    ``nbtl zoo`` share (their options extend it, keyword-only). ``None`` means the default: the study's own name,
    an embedded Ray, ``$MLFLOW_TRACKING_URI`` else ``sqlite:///mlflow.db``, the default results folder, Ray Tune's
    concurrency, no time budget, and the trial resources :meth:`trial_resources` is given."""

    name: str | None = None
    address: str | None = None  # --address: a Ray cluster (host:port or ray://host:port); None: an embedded Ray
    tracking_uri: str | None = None
    storage_path: str | None = None
    max_concurrent: int | None = None
    cpu: float | None = None  # one trial's CPUs
    gpu: float | None = None  # one trial's GPUs (a fraction packs trials on one GPU)
    time_budget: float | None = None  # seconds; the whole study, data loading and start points included

    def trial_resources(self, default: dict[str, float]) -> dict[str, float]:
        """One trial's resources: ``default`` (a space's ``search.resources``, a zoo's 1 CPU), ``cpu`` / ``gpu`` over
        it."""
        resources = dict(default)
        if self.cpu is not None:
            resources["cpu"] = self.cpu
        if self.gpu is not None:
            resources["gpu"] = self.gpu
        return resources


@dataclass
class SearchOptions(RunOptions):
    """What ``nbtl search`` takes besides the space and :class:`RunOptions`; ``None`` means: as the space says, else
    the default."""

    data: str
    trials: int | None = None
    image_size: int | str | None = None  # pixels, or "native" (each backbone's own)
    per_class: int | None = None
    seed: int | None = None  # --seed: the search's; the split's seed, the sampler's, and the trials' derive from it
    classes: str | None = None
    test_data: str | None = None  # --test-data: a second source holding the official test images
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    recommend: bool = True  # False: skip the 'recommend' start points (and the learned prior)
    keep_checkpoints: bool = False  # keep the trials' checkpoints after the search finished (--resume needs none then)
    keep_weights: int | None = None  # the best K trials keep their best-epoch weights (nbtl ensemble); None: DEFAULTS
    register: str | None = None  # the registered model's name; None: the search's name
    register_model: bool = True  # False (--no-register): the best model is logged on the parent run, not registered
    subsample: float | str | None = None  # --subsample: auto, or the share of the images trials use; None: the space's
    cache_size: int | None = None  # --cache-size: bytes the frozen-prefix store may take on disk; None: no limit
    optuna_storage: str | None = None  # --optuna-storage: the Optuna study's RDB URL; None: optuna.db in its folder
    weights: dict[str, str] = field(default_factory=dict)  # --weights: backbone -> a local weights file to use instead

    def settings_overrides(self) -> dict[str, Any]:
        """The data settings these options set (None: as the space says), by DataSettings' names."""
        return {
            "image_size": self.image_size,
            "per_class": self.per_class,
            "split_seed": self.seed,
            "classes": self.classes,
            "test_data": self.test_data,
        }


@dataclass
class SearchResult:
    """What a finished search gives back, as Ray Tune's ``ResultGrid`` does.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per trial, best first (the one ranking of :mod:`nbtl.ranking`): its config, status,
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

    if key in SETTING_KEYS:
        return getattr(DataSettings.from_space(space, options.settings_overrides()), key)
    value = getattr(options, key, None)
    if value is not None:
        return value
    if key in DEFAULTS:
        return DEFAULTS[key]
    return getattr(space.settings, key)


def optuna_sampler(space: SearchSpace, seed: int):
    """Optuna's sampler of the space (:mod:`nbtl.search.algorithms`): TPE (the default) or random."""
    return space.settings.sampler.make(seed)


def tune_scheduler(space: SearchSpace, budget: float | None = None):
    """Ray Tune's scheduler of the space (:mod:`nbtl.search.algorithms`): ASHA with rungs in epochs (the default),
    or in seconds of a trial's wall time (``unit: seconds``; ``max_t`` defaults to the time budget), or FIFO."""
    return space.settings.scheduler.make(space.max_epochs, budget, str(space.path))


def storage_folder(storage_path: str | None) -> Path:
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


def claim_experiment_dir(storage: Path, name: str) -> str:
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


def trial_resources(space: SearchSpace, options: SearchOptions) -> dict[str, float]:
    """One trial's resources: the space's ``search.resources`` (default 1 CPU, no GPU), ``--cpu`` / ``--gpu`` over it."""
    return options.trial_resources(space.settings.resources)


def time_budget(options: SearchOptions, space: SearchSpace) -> float | None:

    if options.time_budget is not None:
        return float(options.time_budget)
    return space.settings.time_budget


def trial_count(options: SearchOptions, space: SearchSpace, budget: float | None) -> int:
    """Trials to run: ``--trials``, else the space's; with a time budget from the command line and no
    ``--trials``, as many as fit (-1, Ray Tune's "until stopped")."""
    if options.trials is not None:
        return int(options.trials)
    if budget is not None and options.time_budget is not None:
        return -1
    return int(setting(options, space, "trials"))


def kept_seconds(budget: float, space: SearchSpace) -> float:
    """Seconds of ``budget`` not for trials: the wrap-up, and the re-evaluation's share when the space asks for one."""

    reevaluate = space.settings.reevaluate_top >= 2
    return wrap_up_seconds(budget) + (BUDGET_SHARE * budget if reevaluate else 0.0)


def wrap_up_seconds(budget: float) -> float:
    """Seconds of a time budget kept for after the trials (Ray's shutdown, the results table, plots and
    artifacts), so the whole search ends within it: 10 %, between 5 and 30 s."""
    return min(30.0, max(5.0, 0.1 * budget))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def open_rdb(url: str):
    """Optuna's RDB storage at ``url`` (SQLite, PostgreSQL, MySQL); a URL it cannot open is one
    :class:`SearchError` naming it and the fix. Here, not in :mod:`nbtl.search.study_store` (which imports Ray), so
    that ``--optuna-storage`` is checked before the search starts and Ray loads only after its token is set."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # noqa: BLE001  (SQLAlchemy's errors for a bad URL, driver or path are many)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SearchError(
            f"--optuna-storage {url}: Optuna cannot open it ({reason}); give a database URL such as "
            "sqlite:///optuna.db or postgresql://user@host/db"
        ) from None
