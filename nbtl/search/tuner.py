"""The Ray Tune run of a search: its Tuner (trainable, searcher, scheduler, callbacks) and running it, with Ctrl-C
and a full disk each ending it in one line and a state that ``--resume`` continues."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from nbtl.errors import DiskFullError
from nbtl.features import remove_staging
from nbtl.search.finish import finish_search
from nbtl.search.lifecycle import SearchInterrupted, fit_study, remove_trial_checkpoints, study_tuner
from nbtl.search.options import PREFIX_CACHE, SearchOptions, SearchResult, setting
from nbtl.search.plan import Plan
from nbtl.search.prepare import Prepared, trainable_for
from nbtl.search.session import Session
from nbtl.search.space import SearchSpace

logger = logging.getLogger(__name__)


def make_tuner(plan: Plan, prepared: Prepared, context, space: SearchSpace, options: SearchOptions, started: float):
    """Ray Tune's Tuner of a planned search: the trainable with the shared data and weights, Optuna's searcher, the
    scheduler, the progress callback and the Optuna study's mirror."""
    # Ray's modules (and nbtl's that import them) load only here, after nbtl.search.cluster.use_token_auth: Ray reads
    # RAY_AUTH_MODE when it is first imported
    from nbtl.search.callbacks import SearchCallback
    from nbtl.search.study_store import StudyMirror

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
    mirror = StudyMirror(plan.optuna_storage, plan.experiment_dir, space.sample)
    return study_tuner(
        trainable_for(prepared, context),
        name=plan.experiment_dir,
        storage_path=str(plan.experiment_path.parent),
        callbacks=[callback, mirror],
        num_samples=plan.trials,
        max_concurrent=plan.max_concurrent,
        time_budget_s=plan.remaining,
        max_failures=int(setting(options, space, "max_failures")),
        # 2, not 1: a driver killed between Ray Tune deleting the older checkpoint and saving its experiment state
        # would leave that state pointing at a deleted checkpoint (--resume failed so, 1 run in 5)
        keep_checkpoints=2,
        reuse_actors=space.settings.reuse_actors,
        search_alg=plan.searcher,
        scheduler=plan.scheduler,
    )


def run_trials(
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
    status_fn: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run the trials; on Ctrl-C let Ray Tune stop them and save the experiment for ``--resume``, then raise
    :class:`SearchInterrupted` (the caller's run context ends the runs KILLED). A trial that finds a disk full
    stops the search the same way (:meth:`SearchCallback.stop_on_full_disk`), and :class:`DiskFullError` says
    so in one line with ``resume``, the command that continues the search once there is room (the caller's run
    context ends the parent FAILED with it)."""

    session = Session(tracker, print_fn, status=status_fn)
    fit = fit_study(tuner, str(experiment_path), session)
    if fit.disk_full is not None:
        raise _disk_full(fit.disk_full, experiment_path, resume) from fit.error
    if fit.interrupted:
        raise SearchInterrupted(f"search {experiment_path.name} interrupted")
    result = finish_search(
        tracker,
        fit.results,
        session.callback,
        space,
        experiment_path,
        started,
        budget,
        reevaluation,
        handover,
        print_fn,
    )
    if not keep_checkpoints:
        freed = remove_trial_checkpoints(experiment_path)
        logger.info("removed the trial checkpoints of %s (%.1f MB)", experiment_path, freed / 1e6)
    freed = remove_staging(experiment_path / PREFIX_CACHE)  # every trial has ended: no entry is being written
    if freed:
        print_fn(f"removed {freed / 1e6:.1f} MB of prefix cache entries that trials stopped before finishing")
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
