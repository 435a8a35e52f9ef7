"""Run a search: data and weights loaded once, Ray Tune trials proposed by Optuna, stopped by ASHA,
tracked in MLflow, summarised as a pandas table and the best config."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from nbtl import __version__
from nbtl.config import TrialConfig
from nbtl.errors import NbtlError
from nbtl.search.space import SearchSpace, dump_config

DEFAULTS = {"image_size": 64, "val_fraction": 0.15, "test_fraction": 0.15, "trials": 8, "max_concurrent": 2,
            "seed": 0, "max_failures": 0}
DATA_SETTINGS = ("image_size", "val_fraction", "test_fraction", "per_class")
METRIC, MODE = "best_val_accuracy", "max"
SEARCH_STATE = "nbtl_search.json"
RESULT_COLUMNS = ["epoch", "best_val_accuracy", "best_epoch", "test_accuracy", "test_macro_f1", "test_weighted_f1",
                  "val_accuracy", "val_loss"]


class SearchError(NbtlError):
    """The search cannot start (cluster unreachable, storage not writable)."""


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
    image_size: int | None = None
    per_class: int | None = None
    seed: int | None = None
    cpu: float | None = None
    gpu: float | None = None
    warm_start: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SearchResult:
    table: pd.DataFrame
    best: dict[str, Any] | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    experiment_path: str


def setting(options: SearchOptions, space: SearchSpace, key: str) -> Any:
    value = getattr(options, key, None)
    if value is not None:
        return value
    section = space.data if key in DATA_SETTINGS else space.search
    return section.get(key, DEFAULTS.get(key))


def _quiet_ray() -> None:
    """Keep Ray Tune's console to our progress lines: no experiment-sync warnings for small
    searches, no per-checkpoint log lines from the workers."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing
    for name in ("ray.tune", "ray.train", "ray.air", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def init_ray(address: str | None) -> str:
    """Embedded Ray by default; ``address`` joins a running cluster (``ray start --head``).

    Returns the GCS address of the Ray instance the search runs on.
    """
    import ray

    _quiet_ray()
    if not ray.is_initialized():
        if not address:
            # address="local": always a fresh embedded instance, never a stale `ray start` found in /tmp/ray.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            _join_cluster(address)
    return ray.get_runtime_context().gcs_address


def use_token_auth(address: str | None) -> None:
    """Turn on Ray's token authentication for a client joining ``address`` when a token is at hand.

    A head started with ``ray start --head`` (Ray >= 2.52) requires it. Ray reads ``RAY_AUTH_MODE``
    when it is imported, so this runs before the first ``import ray``.
    """
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if address and "RAY_AUTH_MODE" not in os.environ and (token.exists() or os.environ.get("RAY_AUTH_TOKEN")):
        os.environ["RAY_AUTH_MODE"] = "token"


def _resolve_address(address: str) -> str:
    """``auto`` → the address in ``$RAY_ADDRESS`` or of the last ``ray start`` on this machine."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip():
        return current.read_text().strip()
    raise SearchError("--address auto: no running Ray cluster found on this machine; start one with "
                      "`ray start --head` or give its address, e.g. --address 127.0.0.1:6379")


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address``: Ray itself retries for minutes."""
    target = _resolve_address(address)
    host_port = target.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise SearchError(f"--address {address}: nothing answers at {host}:{port} ({error.strerror or error}); "
                          "start the head with `ray start --head --port PORT` or fix the address") from None


def _join_cluster(address: str) -> None:
    import ray

    _probe(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as error:  # ConnectionError, RuntimeError, auth errors: all mean "cannot join"
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SearchError(
            f"--address {address}: cannot join the Ray cluster ({detail}); check that the head runs "
            "(`ray status --address ADDR`) and, for a head with token authentication, that RAY_AUTH_MODE=token "
            "and the token (~/.ray/auth_token or RAY_AUTH_TOKEN) are set"
        ) from None


def _sampler(space: SearchSpace, seed: int):
    import optuna

    spec = dict(space.search.get("sampler") or {})
    kind = spec.pop("type", "tpe")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    spec.setdefault("constant_liar", True)  # parallel trials do not all pick the same point
    return optuna.samplers.TPESampler(seed=seed, **spec)


def _scheduler(space: SearchSpace):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = dict(space.search.get("scheduler") or {})
    if spec.pop("type", "asha") == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=space.max_epochs,
                         grace_period=spec.get("grace_period", 1), reduction_factor=spec.get("reduction_factor", 2))


def _experiment_dir(storage: Path, name: str) -> str:
    if not (storage / name).exists():
        return name
    return f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"


def results_table(results, run_ids: dict[str, str]) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One row per trial (its id, MLflow run, status, config and best-epoch metrics), best first;
    and each trial's full config by trial id."""
    rows, configs = [], {}
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        config = TrialConfig.from_dict(result.config).to_dict() if result.config else {}
        configs[trial_id] = config
        epochs = int(metrics.get("epoch", 0) or 0)
        status = "FAILED" if result.error else ("STOPPED" if 0 < epochs < config.get("epochs", epochs) else "FINISHED")
        row = {"trial_id": trial_id, "run_id": run_ids.get(trial_id, ""), "status": status}
        row.update({k: config.get(k) for k in (result.config or {})})
        row.update({k: metrics.get(k) for k in RESULT_COLUMNS})
        row["error"] = str(result.error).strip().splitlines()[-1][:200] if result.error else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(METRIC, ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return table, configs


def run_search(space: SearchSpace, options: SearchOptions, print_fn: Callable[[str], None] = print) -> SearchResult:
    """Run the search described by ``space`` on ``options.data``; see ``nbtl search --help``."""
    use_token_auth(options.address)
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from nbtl.backbones import load_pretrained_state_dict
    from nbtl.data import load_dataset, split_dataset
    from nbtl.search.callbacks import SearchCallback
    from nbtl.search.trainable import TrialContext, nbtl_trainable
    from nbtl.tracking import SearchTracker

    name = options.name or space.name
    seed = int(setting(options, space, "seed"))
    trials = int(setting(options, space, "trials"))
    image_size = int(setting(options, space, "image_size"))

    started = time.perf_counter()
    dataset = load_dataset(options.data, image_size=image_size, per_class=setting(options, space, "per_class"), seed=seed)
    splits = split_dataset(dataset, val_fraction=setting(options, space, "val_fraction"),
                           test_fraction=setting(options, space, "test_fraction"), seed=seed)
    print_fn(f"data {dataset.name}: {len(dataset)} images, {len(dataset.classes)} classes, {image_size}px "
             f"(train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}), "
             f"decoded once in {time.perf_counter() - started:.1f}s")
    pretrained = any(p.name == "pretrained" and True not in p.candidates() for p in space.parameters)
    weights = {} if pretrained else {b: load_pretrained_state_dict(b) for b in space.backbones()}

    ray_address = init_ray(options.address)  # before MLflow: a cluster that cannot be joined leaves no run behind
    storage = Path(options.storage_path or "nbtl_results").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    experiment_dir = _experiment_dir(storage, name)
    tracker = SearchTracker(options.tracking_uri, name)
    resources = {**{"cpu": 1, "gpu": 0}, **(space.search.get("resources") or {})}
    if options.cpu is not None:
        resources["cpu"] = options.cpu
    if options.gpu is not None:
        resources["gpu"] = options.gpu
    params = {"space": space.path, "data": options.data, "image_size": image_size, "trials": trials,
              "max_concurrent": setting(options, space, "max_concurrent"), "seed": seed,
              "per_class": setting(options, space, "per_class"), "cpu_per_trial": resources["cpu"],
              "gpu_per_trial": resources["gpu"], "sampler": json.dumps(space.search.get("sampler") or {"type": "tpe"}),
              "scheduler": json.dumps(space.search.get("scheduler") or {"type": "asha"}),
              "augmentation": json.dumps(space.data.get("augmentation") or {})}
    tags = {"nbtl.dataset": dataset.name, "nbtl.space": space.name, "nbtl.experiment_path": str(storage / experiment_dir),
            "nbtl.ray_address": options.address or "embedded", "nbtl.ray_gcs_address": ray_address}
    parent_run_id = tracker.start(params, tags)
    tracker.log_text(space.source or dump_config({}), "search_space.yaml")
    (storage / experiment_dir).mkdir(parents=True, exist_ok=True)
    (storage / experiment_dir / SEARCH_STATE).write_text(json.dumps(
        {"name": name, "parent_run_id": parent_run_id, "experiment_id": tracker.experiment_id,
         "tracking_uri": tracker.tracking_uri, "space": space.path, "options": options.__dict__}, indent=2, default=str))
    print_fn(f"MLflow: experiment {name!r} ({tracker.tracking_uri}), parent run {parent_run_id}")

    context = TrialContext(tracking_uri=tracker.tracking_uri, experiment_id=tracker.experiment_id,
                           parent_run_id=parent_run_id, augmentation=space.data.get("augmentation"),
                           tags={"nbtl.search": name, "nbtl.dataset": dataset.name, "nbtl.version": __version__})
    trainable = tune.with_resources(tune.with_parameters(nbtl_trainable, splits=splits, weights=weights, context=context),
                                    resources)
    searcher = OptunaSearch(space=space.define_by_run(), metric=METRIC, mode=MODE, sampler=_sampler(space, seed),
                            points_to_evaluate=options.warm_start or None)
    callback = SearchCallback(tracker, trials, space.max_epochs, print_fn)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(space), num_samples=trials,
                                    max_concurrent_trials=int(setting(options, space, "max_concurrent"))),
        run_config=tune.RunConfig(
            name=experiment_dir, storage_path=str(storage), callbacks=[callback], verbose=0,
            failure_config=tune.FailureConfig(max_failures=int(setting(options, space, "max_failures"))),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    print_fn(f"search {name!r}: {trials} trials, up to {params['max_concurrent']} at once, "
             f"resources per trial {resources}, results in {storage / experiment_dir}")
    try:
        results = tuner.fit()
    except BaseException:
        tracker.close_open_children("KILLED", "the search was interrupted")
        tracker.end("KILLED")
        raise
    return finish_search(tracker, results, callback.run_ids, space, storage / experiment_dir, time.perf_counter() - started)


def finish_search(tracker, results, run_ids: dict[str, str], space: SearchSpace, experiment_path: Path,
                  wall_time: float) -> SearchResult:
    """Write the results table, best config and summary metrics to the parent run; end it."""
    table, configs = results_table(results, run_ids)
    ok = table[table["status"] != "FAILED"] if not table.empty else table
    best = None
    if not ok.empty and ok[METRIC].notna().any():
        row = ok.loc[ok[METRIC].idxmax()].to_dict()
        config = configs[row["trial_id"]]
        best = {"trial_id": row["trial_id"], "run_id": row["run_id"], "config": config,
                **{k: row[k] for k in RESULT_COLUMNS}}
        tracker.log_text(dump_config(config), "best_config.yaml")
        (experiment_path / "best_config.yaml").write_text(dump_config(config))
        tracker.set_tags({"nbtl.best_run_id": row["run_id"], "nbtl.best_trial_id": row["trial_id"]})
        tracker.log_metrics({"best_val_accuracy": row[METRIC], "best_test_accuracy": row["test_accuracy"]})
    csv = table.to_csv(index=False)
    tracker.log_text(csv, "results.csv")
    (experiment_path / "results.csv").write_text(csv)
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    tracker.log_metrics({"trials_finished": counts.get("FINISHED", 0) + counts.get("STOPPED", 0),
                         "trials_failed": counts.get("FAILED", 0), "wall_time_s": wall_time})
    tracker.end("FINISHED")
    return SearchResult(table, best, tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id,
                        str(experiment_path))

