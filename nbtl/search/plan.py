"""What a search decides before its MLflow parent run exists, so that a setting that cannot work fails with no run
left behind: its folder, the start points, whether the time budget leaves room for trials (and about how many), the
sampler (with the learned prior), the scheduler, the re-evaluation, and the parent run's params."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbtl.config import TrialConfig
from nbtl.data.images import release_mapped, trim_heap
from nbtl.errors import ConfigError
from nbtl.ranking import METRIC, MODE
from nbtl.search.cluster import SearchError
from nbtl.search.cost import CostModel, measure_speed, trial_seconds
from nbtl.search.options import (
    PREFIX_CACHE,
    SearchOptions,
    claim_experiment_dir,
    duration,
    kept_seconds,
    open_rdb,
    optuna_sampler,
    setting,
    time_budget,
    trial_count,
    tune_scheduler,
    wrap_up_seconds,
)
from nbtl.search.prepare import Prepared
from nbtl.search.prior import build_prior
from nbtl.search.reevaluate import Reevaluation
from nbtl.search.space import SearchSpace
from nbtl.search.start import start_points

OPTUNA_DB = "optuna.db"  # the search's Optuna study (SQLite, in its folder) unless --optuna-storage names another


def _with_prior(
    sampler,
    space: SearchSpace,
    task,
    n_classes: int,
    seed: int,
    print_fn: Callable[[str], None],
    prepared: Prepared | None = None,
):
    """The sampler, wrapped in the learned prior (:mod:`nbtl.search.prior`) when the space asks for it
    (``search.prior.enabled``, default on for TPE) and the task's fit was measured; with ``search.prior.cost_aware``
    its candidates are ranked by expected gain per second (:class:`nbtl.search.cost.CostModel`, each backbone's
    speed measured here)."""
    settings = space.settings
    if not settings.prior_enabled or task is None:
        return sampler

    cost = None
    if settings.prior.cost_aware and prepared is not None:
        threads = int(max(1, prepared.resources.get("cpu", 1)))
        sizes = prepared.image_sizes or dict.fromkeys(space.backbones(), int(prepared.splits.train.image_size))
        speeds = {b: measure_speed(b, size, threads) for b, size in sizes.items()}
        n_eval = len(prepared.splits.val) + len(prepared.splits.test)
        cost = CostModel(speeds, len(prepared.splits.train), n_eval, cached=space.prefix_cache)
    prior = build_prior(
        space,
        sampler,
        {b: task.row(b) for b in task.backbones},
        n_classes,
        seed=seed,
        cost=cost,
        n_candidates=settings.prior.n_candidates,
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
class Plan:
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


def make_plan(
    space: SearchSpace,
    options: SearchOptions,
    prepared: Prepared,
    storage: Path,
    started: float,
    print_fn: Callable[[str], None],
) -> Plan:
    from ray.tune.search.optuna import OptunaSearch

    name = options.name or space.name
    seed = int(setting(options, space, "split_seed"))  # the search seed: the split's, the sampler's
    budget = time_budget(options, space)
    experiment_dir = claim_experiment_dir(storage, name)
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
        # a CPU search's fit measures take a share of its budget at most (a GPU's speed is not modelled)
        seconds=None if budget is None or prepared.resources.get("gpu") else budget,
        threads=1,  # fit_seconds is calibrated on one thread's timing (the steadier: two threads' varies 8-fold)
        image_sizes=dict(prepared.image_sizes),
    )
    # the fit measures read the data file here: its pages go back to the page cache before the trials map it
    release_mapped(*(part.images for part in (prepared.splits.train, prepared.splits.val, prepared.splits.test)))
    trim_heap()  # and what they freed (features, activations) back to the system: the driver waits on the trials
    setup = time.perf_counter() - started
    _refuse_a_budget_spent_on_setup(budget, setup, space, storage / experiment_dir, "recommend" in names)
    expected = None
    if budget is not None:
        expected = _say_what_the_budget_affords(
            space, prepared, starts, budget - setup - kept_seconds(budget, space), setup, options, print_fn
        )
    warm_start = list(options.warm_start or []) + starts.points + list(space.settings.points_to_evaluate)
    sampler = _with_prior(
        optuna_sampler(space, seed), space, starts.task, len(prepared.splits.train.classes), seed, print_fn, prepared
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
    top = space.settings.reevaluate_top
    if top >= 2:
        reevaluation = Reevaluation(
            top,
            seed,
            prepared.trial_splits(),
            prepared.weights,
            prepared.data_settings.augmentation,
            str(storage / experiment_dir / PREFIX_CACHE),
            prepared.resources,
            say=print_fn,
            deadline=None if budget is None else started + budget - wrap_up_seconds(budget),
            image_sizes=dict(prepared.image_sizes),
            resplit=space.settings.reevaluate_resplit,
        )
    remaining = None
    if budget is not None:
        remaining = max(1.0, budget - (time.perf_counter() - started) - kept_seconds(budget, space))
    return Plan(
        name,
        seed,
        budget,
        trial_count(options, space, budget),
        int(setting(options, space, "max_concurrent")),
        experiment_dir,
        storage / experiment_dir,
        starts,
        searcher,
        tune_scheduler(space, budget),
        reevaluation,
        remaining,
        optuna_storage,
        expected,
    )


def run_params(plan: Plan, space: SearchSpace, options: SearchOptions, prepared: Prepared) -> dict[str, Any]:
    """The parent run's params: the search's settings as it ran."""
    return {
        "space": space.path,
        "data": options.data,
        **prepared.data_settings.to_params(),  # the split's seed as split_seed
        "search_seed": plan.seed,  # the sampler's; each trial trains with its own seed
        "trials": plan.trials if plan.trials > 0 else "until the time budget",
        "max_concurrent": plan.max_concurrent,
        "cpu_per_trial": prepared.resources["cpu"],
        "gpu_per_trial": prepared.resources["gpu"],
        "sampler": json.dumps(space.settings.sampler.to_dict()),
        "scheduler": json.dumps(space.settings.scheduler.to_dict()),
        "time_budget_s": plan.budget,
        "subsample": prepared.subsample,
        "start_points": ",".join(plan.starts.labels) or "none",
        **({"weights": json.dumps(options.weights, sort_keys=True)} if options.weights else {}),
    }


MIN_TRIAL_S = 10.0


SUGGESTED_TRIAL_S = 60.0


def _say_what_the_budget_affords(
    space: SearchSpace, prepared: Prepared, starts, left: float, setup: float, options, print_fn
) -> int | None:
    """One line before the trials: the setup's seconds, what a trial costs here (:mod:`nbtl.search.cost`, measured
    on this machine for the space's first backbone), and about how many trials the time left affords. CPU trials
    only: a GPU's speed is not modelled."""

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
    points = f"the {len(starts.points)} start point(s) (about {duration(first)}) and " if starts.points else ""
    print_fn(
        f"setup took {duration(setup)}; a trial of {backbone} at {size}px costs about {duration(full)} here "
        f"fine-tuning every block, {duration(half)} with half of them frozen (measured in {measured:.1f}s, if it "
        f"runs all its epochs): the {duration(left)} left for trials afford {points}about {more} more, "
        f"{at_once} at a time"
    )
    cheapest = min([cost(point) for point in starts.points] + [half])
    if cheapest > left:  # even the cheapest trial cannot run its epochs: say so now, not after the budget
        print_fn(
            f"warning: no trial can finish in the {duration(left)} left: the cheapest costs about {duration(cheapest)} "
            f"here ({n_train + n_eval:,} images at {size}px); trials run until the budget ends them. A smaller "
            "--image-size, --per-class N or a GPU (--gpu 1) lets trials finish"
        )
    return len(starts.points) + more


def _refuse_a_budget_spent_on_setup(
    budget: float | None, setup: float, space: SearchSpace, claimed: Path, recommended: bool
) -> None:
    """One :class:`SearchError` when the setup (data, start points, Ray) left less than :data:`MIN_TRIAL_S` of the
    time budget for trials, naming what it took and a budget that leaves a minute; the results folder the search
    claimed is given back. Nothing is logged to MLflow yet."""
    if budget is None or budget - setup - kept_seconds(budget, space) >= MIN_TRIAL_S:
        return
    suggested = 60.0
    while suggested - setup - kept_seconds(suggested, space) < SUGGESTED_TRIAL_S:
        suggested += 60.0
    shutil.rmtree(claimed, ignore_errors=True)
    raise SearchError(
        f"--time-budget {duration(budget)}: the setup (data, start points, Ray) took {duration(setup)} and "
        f"{duration(kept_seconds(budget, space))} is kept for the wrap-up, which leaves no time for a trial; give at least "
        f"--time-budget {duration(suggested)} (a minute for trials)"
        + (", or --no-recommend for a shorter setup" if recommended else "")
    )
