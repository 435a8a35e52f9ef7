"""Run a search: data and weights loaded once, Ray Tune trials proposed by Optuna, stopped by ASHA,
tracked in MLflow, summarised as a pandas table and the best config.

The search's rooms: :mod:`~nbtl.search.options` (precedence, sampler and scheduler), :mod:`~nbtl.search.prepare`
(data and weights, once), :mod:`~nbtl.search.plan` (what is decided before the MLflow run), :mod:`~nbtl.search.tuner`
(the Ray Tune run), :mod:`~nbtl.search.finish` (table, ranking, plots, hand-over) and :mod:`~nbtl.search.resume`
(its state file and ``--resume``). This module joins them: :func:`run_search`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from nbtl import __version__
from nbtl.config import dump_config
from nbtl.search.cluster import check_services, cluster_address, study_ray
from nbtl.search.finish import results_table
from nbtl.search.lifecycle import resume_command, tell_how_to_resume
from nbtl.search.options import PREFIX_CACHE, SearchOptions, SearchResult, duration, storage_folder
from nbtl.search.plan import make_plan, run_params
from nbtl.search.prepare import handover_for, prepare
from nbtl.search.resume import resume_search, write_state
from nbtl.search.space import SearchSpace
from nbtl.search.trainable import TrialContext
from nbtl.search.tuner import make_tuner, run_trials
from nbtl.tracking import SearchTracker, search_experiment

__all__ = ["SearchOptions", "SearchResult", "resume_search", "results_table", "run_search"]

RESUME_TAG = "nbtl.resume_command"  # the parent run's: the exact `nbtl search --resume ...` of an unfinished search


def run_search(
    space: SearchSpace,
    options: SearchOptions,
    print_fn: Callable[[str], None] = print,
    status_fn: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run the search described by ``space`` on ``options.data``; see ``nbtl search --help``.

    Everything that can be refused (data, cluster, resources, sampler, scheduler) is checked before the
    MLflow parent run is created; once it exists, any error or Ctrl-C ends it and its open trial runs
    (KILLED on Ctrl-C, which also prints the ``--resume`` command and raises :class:`SearchInterrupted`).
    The Ray instance the search started is shut down when it ends. ``print_fn`` takes the progress lines,
    ``status_fn`` (a terminal's live status line) the trials done / running / left, the best so far and the time
    left, about every second while trials run.
    """

    check_services(options.address, options.tracking_uri)  # in seconds: before any image is decoded or Ray starts
    if space.weights:  # the space's own weights files (parameters.backbone.weights); --weights wins
        options = dataclasses.replace(options, weights={**space.weights, **options.weights})
    started = time.perf_counter()
    prepared = prepare(space, options, print_fn)
    # the share of the images chosen (search.subsample auto): --resume reads it back from the state, not again
    options = dataclasses.replace(options, subsample=prepared.subsample)
    space = space.resolved(len(prepared.splits.train))
    storage = storage_folder(options.storage_path)
    # Ray before MLflow: a cluster that cannot be joined, or resources no node has, leave no run behind
    with study_ray(options.address, prepared.resources) as ray_address:
        plan = make_plan(space, options, prepared, storage, started, print_fn)

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
            tracker.search_run(run_params(plan, space, options, prepared), tags) as parent_run_id,
        ):
            tracker.log_text(space.source or dump_config({}), "search_space.yaml")
            tracker.log_dataset(prepared.dataset_input)
            write_state(plan, tracker, space, options, started)
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
            tuner = make_tuner(plan, prepared, context, space, options, started)
            count = f"{plan.trials} trials" if plan.trials > 0 else "trials until the time budget ends"
            print_fn(
                f"search {plan.name!r}: {count}, up to {plan.max_concurrent} at once, "
                + (
                    f"time budget {duration(plan.budget)} ({duration(plan.remaining)} left for trials), "
                    if plan.budget
                    else ""
                )
                + f"resources per trial {prepared.resources}, results in {plan.experiment_path}"
            )
            return run_trials(
                tuner,
                tracker,
                print_fn,
                space,
                plan.experiment_path,
                started,
                plan.budget,
                plan.reevaluation,
                options.keep_checkpoints,
                handover_for(prepared, options, plan.name),
                resume=resume,
                status_fn=status_fn,
            )
