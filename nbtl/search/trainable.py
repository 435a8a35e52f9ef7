"""The Ray Tune side of one trial: the only place that calls ``ray.tune`` reporting APIs.

Ray's reporting API has moved several times (``tune.report`` / ``train.report`` / session
APIs); keeping every call here means one file changes when it moves again. The zoo's trainable reports through
the same adapter (:func:`current_trial`, :func:`report_result`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbtl.config import TrialConfig
from nbtl.data.images import trim_heap
from nbtl.errors import ensure_room, one_line, raise_if_disk_full
from nbtl.features import PrefixStore
from nbtl.tracking import TrialTracker, status_for, trial_run_name
from nbtl.train import train_trial

TRIAL_CHECKPOINT = "trial.pt"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares, shipped once through Ray's object store."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    augmentation: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    prefix_cache_dir: str | None = None  # the search's frozen-prefix feature store, on storage every node mounts
    seed: int = 0  # the search seed: the augmented views of the prefix store derive from it
    dataset: dict[str, Any] | None = None  # nbtl.data.describe.describe_dataset: logged as each trial run's input
    cache_prefix: bool = True  # search.prefix_cache: False runs every block of every trial on every step
    prefix_cache_bytes: int | None = None  # --cache-size: the most the prefix store may take on disk (LRU)
    storage_dir: str | None = None  # the search's folder on its storage path, where Ray Tune copies checkpoints
    image_sizes: dict[str, int] = field(default_factory=dict)  # each backbone's image size, unless a trial has its own

    def image_size_of(self, config) -> int | None:
        """The size a trial trains at: its own ``image_size``, else its backbone's (None: the splits' one size)."""
        return config.image_size or self.image_sizes.get(config.backbone)


_STORES: dict[tuple[str | None, int, int | None], Any] = {}


def prefix_store(directory: str | None, seed: int, max_disk_bytes: int | None = None):
    """One :class:`nbtl.features.PrefixStore` per search folder and worker process: entries computed by one
    trial are mapped from disk by the others (on every node, as the folder lies on the search's shared
    storage) and kept for the next trial of the same worker. ``seed`` is the search seed (the augmented views
    derive from it); ``max_disk_bytes`` caps the folder (least recently used entries removed)."""
    key = (directory, seed, max_disk_bytes)
    if key not in _STORES:
        _STORES[key] = PrefixStore(directory, seed=seed, max_disk_bytes=max_disk_bytes)
    return _STORES[key]


def compact_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """What a trial's checkpoint keeps of :func:`nbtl.train.train_trial`'s state: all but the frozen blocks'
    weights and statistics, which a resumed trial rebuilds from the pre-trained weights and its seed."""
    frozen = set(state.pop("frozen_keys", ()))
    return {**state, "model": {k: v for k, v in state["model"].items() if k not in frozen}}


def _load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The trial state in a checkpoint folder, or None when it is missing or truncated (a kill mid-write)."""
    import torch

    try:
        return torch.load(directory / TRIAL_CHECKPOINT, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None


def _trial_storage_dir(checkpoint) -> Path | None:
    """The trial's folder under the search's storage path, where Ray writes its ``checkpoint_NNNNNN`` folders."""
    try:  # Ray keeps it on the trial's session; no public API names it
        from ray.train._internal.session import get_session

        return Path(get_session().storage.trial_fs_path)
    except (ImportError, AttributeError, RuntimeError):
        return Path(checkpoint.path).parent if checkpoint is not None else None


def latest_checkpoint(checkpoint) -> tuple[dict[str, Any] | None, bool]:
    """The state to resume a trial from, and whether it is newer than the one Ray restored (``checkpoint``).

    A driver killed between a trial's report and its own bookkeeping restores the trial from an older
    checkpoint than the worker had already written; the trial would run again an epoch whose result was
    reported and checkpointed. The newest complete ``checkpoint_*`` folder of the trial wins instead."""
    known = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            known = _load_checkpoint(Path(directory))
    folder = _trial_storage_dir(checkpoint)
    if folder is None or not folder.is_dir():
        return known, False
    known_epoch = int(known["epoch"]) if known is not None else 0
    known_path = Path(checkpoint.path) if checkpoint is not None else None
    for candidate in sorted(folder.glob("checkpoint_*"), reverse=True):
        if candidate == known_path:
            break  # Ray's own is the newest: loaded above already
        state = _load_checkpoint(candidate)
        if state is not None:
            if int(state["epoch"]) > known_epoch:
                return state, True
            break
    return known, False


def save_checkpoint(checkpoint: dict[str, Any], path: Path, storage_dir: str | None = None) -> None:
    """``torch.save`` of a trial's checkpoint to ``path`` (a local folder Ray Tune then copies to ``storage_dir``),
    a full disk said as ``OSError(ENOSPC)``, here or on ``storage_dir`` before Ray copies a byte there (the
    search stops on it, its state whole: :func:`nbtl.errors.ensure_room`)."""
    import torch

    try:
        torch.save(checkpoint, path)
    except RuntimeError as error:
        raise_if_disk_full(error, path)
        raise
    if storage_dir is not None:
        ensure_room(storage_dir, path.stat().st_size, "a trial checkpoint")


@dataclass(frozen=True)
class CurrentTrial:
    """Who the running trial is, as Ray Tune and Ray name it: what a trial's MLflow run is tagged with."""

    trial_id: str
    trial_name: str
    node_id: str
    assigned: dict[str, float]  # the resources Ray gave the trial (``CPU``, ``GPU``)


def current_trial() -> CurrentTrial:
    """The trial this worker runs (inside a Ray Tune trainable only)."""
    import ray
    from ray import tune

    context, runtime = tune.get_context(), ray.get_runtime_context()
    return CurrentTrial(
        context.get_trial_id(), context.get_trial_name(), runtime.get_node_id(), runtime.get_assigned_resources()
    )


def report_result(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
    """Hand Ray Tune a trial's result (an epoch's metrics, or a zoo fold's), with the folder of its checkpoint."""
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir is not None else None
    tune.report(metrics, checkpoint=checkpoint)


def torch_threads_for_trial(assigned: dict[str, float]) -> int:
    """Set torch's intra-op threads to the CPUs Ray gave this trial (``assigned``: Ray's assigned resources), at
    least 1: a trial on one CPU that spins several threads fights its neighbours for the core. Returns the count."""
    import torch

    threads = max(1, int(assigned.get("CPU", 1)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def nbtl_trainable(config: dict[str, Any], splits=None, weights=None, context: TrialContext | None = None) -> None:
    """Ray Tune function trainable: one trial of a search.

    ``config`` holds trial config keys (sampled by Optuna, fixed ones added by the space);
    ``splits`` (the decoded images) and ``weights`` (pre-trained state dicts by backbone name)
    arrive through ``tune.with_parameters``, so they are stored once and shared by all trials.
    """
    from ray import tune

    trial = current_trial()
    trial_id, trial_name = trial.trial_id, trial.trial_name
    trial_config = TrialConfig.from_dict(config, where=f"trial {trial_name}")
    threads = torch_threads_for_trial(trial.assigned)
    tags = {
        **context.tags,
        "nbtl.backbone": trial_config.backbone,
        "ray.trial_name": trial_name,
        "nbtl.torch_threads": str(threads),
    }

    tracker = TrialTracker(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        trial_id,
        trial_run_name(trial_id, trial_config.to_dict()),
        trial_config.to_dict(),
        tags,
        location={"nbtl.ray_node_id": trial.node_id},
        dataset=context.dataset,
    )

    resume, unseen = latest_checkpoint(tune.get_checkpoint())
    reported = []

    def report(metrics: dict[str, float], state) -> None:
        tracker.log_epoch(metrics, step=int(metrics["epoch"]))
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(compact_checkpoint(state()), Path(directory) / TRIAL_CHECKPOINT, context.storage_dir)
            reported.append(metrics["epoch"])
            report_result(metrics, directory)

    if isinstance(splits, dict):  # one data file per image size: the trial's own
        size = context.image_size_of(trial_config)
        if size not in splits:
            raise ValueError(
                f"trial {trial_name}: image_size {size} has no data file in this search (it has "
                f"{', '.join(map(str, sorted(splits)))} px): search image_size over choices the space names"
            )
        splits = splits[size]
    # what the trial trains and is scored on: fewer than the data's images under search.subsample
    tracker.log_metrics({f"{part}_images": len(getattr(splits, part)) for part in ("train", "val", "test")})
    weight = (weights or {}).get(trial_config.backbone) if trial_config.pretrained else None
    store = prefix_store(context.prefix_cache_dir, context.seed, context.prefix_cache_bytes)
    try:
        train_trial(
            trial_config,
            splits,
            augmentation=context.augmentation,
            state_dict=weight,
            report=report,
            resume=resume,
            prefix_store=store,
            cache_prefix=context.cache_prefix,
        )
    except SystemExit:
        # Ray ended the trial (its scheduler stopped it, the time budget ran out, or the search was
        # interrupted): only the driver knows which, so the driver closes the run (nbtl.search.callbacks).
        raise
    except BaseException as error:
        tracker.end(status_for(error), reason=one_line(error, with_type=True))
        raise
    finally:
        trim_heap()  # a reused worker waits for its next trial without this one's freed memory
    if unseen and not reported and resume is not None and resume.get("history"):
        # Nothing was left to run after the newest checkpoint, which Ray never saw: hand Ray its result and
        # checkpoint (not MLflow, which holds that epoch already), so the search ranks and hands over this trial.
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(resume, Path(directory) / TRIAL_CHECKPOINT, context.storage_dir)
            report_result(dict(resume["history"][-1]), directory)
    tracker.end("FINISHED")
