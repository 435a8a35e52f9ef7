"""A search's state file (``nbtl_search.json``: what ``--resume`` needs besides Ray Tune's own experiment state) and
``nbtl search --resume``: the same search continued, its finished trials kept, its MLflow parent run re-opened."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from nbtl import __version__
from nbtl.errors import DiskFullError
from nbtl.safe_yaml import load_yaml
from nbtl.search.cluster import SearchError, check_services, study_ray
from nbtl.search.lifecycle import resume_command, tell_how_to_resume
from nbtl.search.options import PREFIX_CACHE, SearchOptions, SearchResult, setting
from nbtl.search.plan import Plan
from nbtl.search.prepare import handover_for, prepare, trainable_for
from nbtl.search.space import SearchSpace, parse_space
from nbtl.search.trainable import TrialContext
from nbtl.search.tuner import run_trials
from nbtl.tracking import SearchTracker

SEARCH_STATE = "nbtl_search.json"
MAX_STATE_BYTES = 10_000_000  # nbtl_search.json is a few KB (options, ids, the space's text)


def write_state(plan: Plan, tracker, space: SearchSpace, options: SearchOptions, started: float) -> None:
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


def resume_search(
    name: str,
    storage_path: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    print_fn: Callable[[str], None] = print,
    keep_checkpoints: bool = False,
    status_fn: Callable[[str], None] | None = None,
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

    check_services(options.address, tracking_uri or state["tracking_uri"])  # in seconds: before data or Ray

    space = parse_space(
        load_yaml(state["space_source"], f"the space saved in {experiment_path / SEARCH_STATE}"),
        where=f"{state_file} (space of {state['space_path']})",
        source=state["space_source"],
    )
    started = time.perf_counter()
    prepared = prepare(space, options, print_fn)
    with study_ray(options.address, prepared.resources):
        from ray import tune

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
                seed=int(setting(options, space, "split_seed")),
                dataset=prepared.dataset_input,
                cache_prefix=space.prefix_cache,
                prefix_cache_bytes=options.cache_size,
                image_sizes=dict(prepared.image_sizes),
            )
            tuner = tune.Tuner.restore(
                str(experiment_path),
                trainable_for(prepared, context),
                resume_unfinished=True,
                resume_errored=after_full_disk,
                restart_errored=False,
            )
            print_fn(f"resuming search {state['name']!r} from {experiment_path} (MLflow parent run {parent_run_id})")
            return run_trials(
                tuner,
                tracker,
                print_fn,
                space,
                experiment_path,
                started,
                keep_checkpoints=keep_checkpoints or bool(options.keep_checkpoints),
                handover=handover_for(prepared, options, state["name"]),
                resume=resume,
                status_fn=status_fn,
            )
