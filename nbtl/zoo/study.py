"""Run a zoo study: every dataset × backbone × head × fold × seed a Ray Tune trial, an MLflow child run of
the study's parent run; the per-cell table, the paired comparison of heads and the plots on the parent.

Data and folds are made once on the driver; the ``frozen`` mode's features (``nbtl fit``'s cache) or the
``finetune`` mode's images and pre-trained weights travel once per node through Ray's object store.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nbtl import __version__
from nbtl.backbones import get_spec, load_pretrained_state_dict
from nbtl.config import TrialConfig
from nbtl.data import load_dataset
from nbtl.errors import ConfigError, DiskFullError
from nbtl.fit import block_features
from nbtl.heads import head_names
from nbtl.heuristics.recipes import conventional_config
from nbtl.ranking import trial_config_of, trial_id_of
from nbtl.search.cluster import check_services, cluster_address, study_ray
from nbtl.search.lifecycle import fit_study, study_tuner
from nbtl.search.options import RunOptions, wrap_up_seconds
from nbtl.search.session import Session, reason_from_error_text
from nbtl.tracking import ROLE_TAG, SearchTracker
from nbtl.zoo import plots
from nbtl.zoo.cv import study_folds
from nbtl.zoo.frozen import HeadRecipe
from nbtl.zoo.report import METRICS, paired_comparison, summary_table
from nbtl.zoo.trainable import ZooContext, zoo_trainable

MODES = ("frozen", "finetune")
#: TrialConfig keys a space's fixed values or flags may set in a fine-tuning study's recipe; the backbone,
#: head and seed are the cell's.
RECIPE_EXCLUDES = ("backbone", "head", "seed")

logger = logging.getLogger(__name__)


#: A zoo trial's resources unless ``cpu`` / ``gpu`` say otherwise.
TRIAL_RESOURCES = {"cpu": 1.0, "gpu": 0.0}


@dataclass
class ZooOptions(RunOptions):
    """What ``nbtl zoo`` takes besides :class:`~nbtl.search.options.RunOptions`; ``settings`` is the
    :class:`~nbtl.data.settings.DataSettings` of every dataset."""

    data: list[str]
    backbones: list[str]
    heads: list[str]
    settings: Any
    mode: str = "frozen"
    folds: int = 5
    seeds: int = 1
    recipe: dict[str, Any] = field(default_factory=dict)  # frozen: HeadRecipe fields; finetune: TrialConfig keys
    use_cache: bool = True


@dataclass
class ZooResult:
    folds: pd.DataFrame  # one row per trial: the cell, fold, seed, status, run id and metrics
    summary: pd.DataFrame  # one row per cell: n and mean / sd of every metric
    comparison: pd.DataFrame  # every head against the baseline head, per dataset and backbone
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    name: str
    wall_time_s: float


def check_options(options: ZooOptions) -> None:
    """Refuse, in one line each, what cannot run: an unknown mode, head or backbone, too few folds."""
    if options.mode not in MODES:
        raise ConfigError(f"--mode {options.mode!r}: use frozen (a new head on cached features) or finetune")
    for flag, values in (("--backbones", options.backbones), ("--heads", options.heads), ("DATA", options.data)):
        if not values:
            raise ConfigError(f"{flag}: give at least one, e.g. {'linear,spinal' if flag == '--heads' else 'digits'}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{flag} names one twice: {', '.join(values)}")
    for head in options.heads:
        if head not in head_names():
            raise ConfigError(f"--heads: unknown head {head!r}; use {', '.join(head_names())}")
    for backbone in options.backbones:
        get_spec(backbone)  # an unknown backbone fails here, in one line
    if isinstance(options.folds, bool) or not isinstance(options.folds, int) or options.folds < 2:
        raise ConfigError(f"--folds must be an integer >= 2, got {options.folds!r}")
    if isinstance(options.seeds, bool) or not isinstance(options.seeds, int) or options.seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1, got {options.seeds!r}")


def baseline_head(heads: list[str]) -> str:
    """The head the others are compared with: ``linear`` when studied, else the first."""
    return "linear" if "linear" in heads else heads[0]


def _cells(names: list[str], options: ZooOptions, seeds: list[int]) -> list[dict[str, Any]]:
    """Every trial, in the order Ray Tune starts them: fold by fold, so a time budget that ends the study
    early leaves whole folds of every cell (which the paired comparison needs), not all folds of a few."""
    return [
        {"index": i, "dataset": name, "backbone": b, "head": h, "seed": s, "fold": f}
        for s in seeds
        for f in range(options.folds)
        for i, name in enumerate(names)
        for b in options.backbones
        for h in options.heads
    ]


def _prepare(options: ZooOptions, seeds: list[int], say: Callable[[str], None]) -> tuple[list[str], list[dict]]:
    """Load every dataset and deal its folds; then the features (frozen) or the weights (finetune)."""
    names, payload = [], []
    weights: dict[str, Any] = {}
    for spec in options.data:
        started = time.perf_counter()
        dataset = load_dataset(spec, **options.settings.load_kwargs())
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name).strip("_.") or "data"  # an MLflow-safe word
        if name in names:
            raise ConfigError(f"DATA: two datasets are both named {name!r} ({spec}); give each dataset once")
        labels = dataset.labels.numpy()
        dealt = study_folds(dataset, options.folds, seeds, options.settings.val_fraction)
        folds = {(f.seed, f.fold): f for f in dealt}
        official = f", official test set of {len(dealt[0].test)} kept" if dealt[0].official_test else ""
        say(
            f"data {name}: {len(dataset)} images, {len(dataset.classes)} classes, {dataset.image_size}px, "
            f"{options.folds} folds x {len(seeds)} seed(s){official}, decoded in {time.perf_counter() - started:.1f}s"
        )
        entry: dict[str, Any] = {"labels": labels, "folds": folds, "num_classes": len(dataset.classes)}
        if options.mode == "frozen":
            entry["features"] = {}
            for backbone in options.backbones:
                started = time.perf_counter()
                features = block_features(dataset, backbone, use_cache=options.use_cache, progress=False)
                entry["features"][backbone] = features.blocks[-1]
                say(
                    f"features {backbone} on {name}: {features.blocks[-1].shape[1]} per image (last block), "
                    f"{'from the cache' if features.from_cache else 'extracted'} in {time.perf_counter() - started:.1f}s"
                )
        else:
            for backbone in options.backbones:
                if backbone not in weights:
                    weights[backbone] = load_pretrained_state_dict(backbone)
            entry.update(dataset=dataset, weights=weights)
        names.append(name)
        payload.append(entry)
    return names, payload


def _recipe(options: ZooOptions) -> dict[str, Any]:
    """The recipe every cell shares, checked once (a bad value is one line, before Ray starts)."""
    if options.mode == "frozen":
        try:
            recipe = HeadRecipe(**options.recipe)
        except TypeError as error:
            raise ConfigError(f"frozen head recipe: {error}") from None
        for key, value in recipe.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"frozen head recipe: {key} must be a number >= 0, got {value!r}")
        return dict(recipe.__dict__)
    recipe = {k: v for k, v in options.recipe.items() if k not in RECIPE_EXCLUDES}
    values = {**conventional_config(options.backbones[0]), **recipe}
    if values.get("batch_size") == "auto":  # resolved per fold (nbtl.zoo.trainable.finetune_config)
        values.pop("batch_size")
    TrialConfig.from_dict(values, where="finetune recipe")
    return recipe


def run_zoo(options: ZooOptions, print_fn: Callable[[str], None] = print) -> ZooResult:
    """Run the study ``options`` describes; see ``nbtl zoo --help``.

    Everything that can be refused (options, services, data, resources) is checked before the MLflow parent
    run exists; once it does, an error or Ctrl-C ends it and its open trial runs. The Ray instance the study
    started is shut down when it ends.
    """
    check_options(options)
    recipe = _recipe(options)
    tracking_uri = check_services(options.address, options.tracking_uri)
    started = time.perf_counter()
    seeds = [options.settings.split_seed + r for r in range(options.seeds)]
    names, payload = _prepare(options, seeds, print_fn)
    name = options.name or f"zoo-{'-'.join(names)}"
    cells = _cells(names, options, seeds)
    resources = options.trial_resources(TRIAL_RESOURCES)
    with study_ray(options.address, resources) as gcs_address:
        tracker = SearchTracker(tracking_uri, name, study="zoo study", resume_hint=None)
        params = {
            "data": ",".join(options.data),
            "datasets": ",".join(names),
            "backbones": ",".join(options.backbones),
            "heads": ",".join(options.heads),
            "mode": options.mode,
            "folds": options.folds,
            "seeds": options.seeds,
            "trials": len(cells),
            "time_budget_s": options.time_budget,
            **options.settings.to_params(),
            **{f"recipe.{k}": v for k, v in recipe.items()},
        }
        tags = {
            ROLE_TAG: "zoo",
            "nbtl.zoo": name,
            "nbtl.mode": options.mode,
            "nbtl.ray_address": cluster_address(options.address) or "embedded",
            "nbtl.ray_gcs_address": gcs_address,
        }
        with tracker.search_run(params, tags) as parent_run_id:
            print_fn(f"MLflow: experiment {name!r} ({tracker.tracking_uri}), parent run {parent_run_id}")
            results, callback = _run_trials(
                options, names, payload, cells, recipe, tracker, resources, started, print_fn
            )
            return _finish(options, names, cells, results, callback, tracker, started)


def _run_trials(options, names, payload, cells, recipe, tracker, resources, started, print_fn):
    from ray import tune

    # Ray loads only here, after check_services turned on its token authentication (nbtl.search.tuner does the same)
    from nbtl.zoo.callbacks import ZooCallback

    context = ZooContext(
        tracking_uri=tracker.tracking_uri,
        experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id,
        mode=options.mode,
        recipe=recipe,
        augmentation=options.settings.augmentation,
        tags={"nbtl.zoo": tracker.search_name, "nbtl.mode": options.mode, "nbtl.version": __version__},
    )
    remaining = None
    if options.time_budget is not None:
        remaining = max(
            1.0, options.time_budget - (time.perf_counter() - started) - wrap_up_seconds(options.time_budget)
        )
    temporary = options.storage_path is None
    storage = Path(options.storage_path or tempfile.mkdtemp(prefix="nbtl_zoo_")).resolve()
    key = str(storage / tracker.parent_run_id)
    callback = ZooCallback(
        key, len(cells), 0, options.time_budget, started=time.time() - (time.perf_counter() - started)
    )
    trainable = tune.with_resources(tune.with_parameters(zoo_trainable, data=payload, context=context), resources)
    tuner = study_tuner(
        trainable,
        name=tracker.parent_run_id,
        storage_path=str(storage),
        callbacks=[callback],
        num_samples=1,
        max_concurrent=options.max_concurrent,
        time_budget_s=remaining,
        max_failures=0,
        keep_checkpoints=1,
        param_space={"cell": tune.grid_search(cells)},
    )
    print_fn(
        f"zoo {tracker.search_name!r}: {len(cells)} trials ({options.mode}: {len(names)} dataset(s) x "
        f"{len(options.backbones)} backbone(s) x {len(options.heads)} head(s) x {options.folds} folds x "
        f"{options.seeds} seed(s)), resources per trial {resources}"
        + (f", {int(remaining)}s of the time budget left for trials" if remaining is not None else "")
    )
    try:
        fit = fit_study(tuner, key, Session(tracker, print_fn))
    finally:
        if temporary:
            shutil.rmtree(storage, ignore_errors=True)
    if fit.disk_full is not None:
        # a temporary storage folder is gone by now: name the disk it was on (the temporary folder, $TMPDIR)
        where = f"{storage.parent} (the temporary folder; TMPDIR moves it)" if temporary else storage
        raise DiskFullError(
            f"the disk is full: {fit.disk_full.removeprefix('OSError: ')}; the zoo study stopped (its finished folds are "
            f"in MLflow): free space under {where}, or pass --storage-path on a disk with room, and run it again"
        ) from fit.error
    if fit.interrupted:
        raise KeyboardInterrupt("zoo study interrupted")
    return fit.results, callback


CELL_KEYS = ("dataset", "backbone", "head", "seed", "fold")


def cell_key_of(values: tuple) -> tuple[str, ...]:
    """A cell's key as its MLflow params spell it (every value a string), so a planned cell and a logged run meet."""
    return tuple(str(value) for value in values)


def fold_table(
    cells: list[dict[str, Any]], results, run_ids: dict[str, str], finished_runs: dict[tuple, Any] | None = None
) -> pd.DataFrame:
    """One row per planned trial (``cells``, in order) from a Ray Tune ``ResultGrid``: cell, seed, fold,
    status (FINISHED, FAILED, or STOPPED when the time budget ended the study before it finished or
    started), run id, metrics and error. ``finished_runs`` (cell key: MLflow run) are the trial runs that ended
    FINISHED with their metrics: a fold whose run finished just before the time budget ended the study, so that
    Ray Tune never received its last report, is FINISHED with the run's metrics (nothing a finished trial wrote is
    lost)."""
    by_cell = {}
    for result in results:
        cell = (trial_config_of(result) or {}).get("cell")
        if cell:  # a trial Ray Tune never started may come back without its config
            by_cell[tuple(cell[k] for k in CELL_KEYS)] = result
    rows = []
    for cell in cells:
        key = tuple(cell[k] for k in CELL_KEYS)
        result = by_cell.get(key)
        metrics = (result.metrics or {}) if result is not None else {}
        error = result.error if result is not None else None
        trial_id = trial_id_of(result) if result is not None else ""
        finished = not error and metrics.get("accuracy") is not None
        run_id = run_ids.get(trial_id, "")
        logged = (finished_runs or {}).get(cell_key_of(key))
        if not finished and not error and logged is not None:
            metrics, finished, run_id = logged.data.metrics, True, logged.info.run_id
        row = {k: cell[k] for k in CELL_KEYS}
        row.update({"status": "FAILED" if error else ("FINISHED" if finished else "STOPPED")})
        row["run_id"] = run_id
        row.update({m: (metrics.get(m) if finished else None) for m in METRICS})
        row["train_seconds"] = metrics.get("train_seconds") if finished else None
        row["error"] = reason_from_error_text(str(error))[:200] if error else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _finish(options, names, cells, results, callback, tracker, started) -> ZooResult:
    import matplotlib.pyplot as plt

    # trials the time budget cut off: Ray stopped them without telling the callback
    for run in tracker.child_runs():
        if run.info.status == "RUNNING":
            tracker.close_trial(
                run.data.tags.get("nbtl.trial_id", ""),
                run.info.run_name,
                {},
                "KILLED",
                reason="the time budget ended before this fold finished",
            )
    runs = tracker.child_runs()
    run_ids = {r.data.tags.get("nbtl.trial_id"): r.info.run_id for r in runs}
    finished_runs = {
        cell_key_of(tuple(r.data.params.get(k) for k in CELL_KEYS)): r
        for r in runs
        if r.info.status == "FINISHED" and "accuracy" in r.data.metrics
    }
    order = {(c["dataset"], c["backbone"], c["head"]): i for i, c in enumerate(cells)}
    folds = fold_table(cells, results, {**run_ids, **callback.run_ids}, finished_runs)
    folds = (
        folds.assign(_cell=[order[key] for key in zip(folds["dataset"], folds["backbone"], folds["head"])])
        .sort_values(["_cell", "seed", "fold"], kind="stable")
        .drop(columns="_cell")
        .reset_index(drop=True)
    )
    finished = folds[folds["status"] == "FINISHED"].astype({m: float for m in METRICS})
    summary = summary_table(finished)
    comparison = paired_comparison(finished, baseline_head(options.heads))
    for file, table in (("zoo_table.csv", summary), ("zoo_folds.csv", folds), ("zoo_heads.csv", comparison)):
        tracker.log_text(table.to_csv(index=False), file)
    if not summary.empty:
        figures = {"accuracy_per_backbone.png": plots.accuracy_bars(summary)}
        if len(names) > 1:
            figures["backbone_dataset_heatmap.png"] = plots.dataset_heatmap(summary)
            figure, correlation = plots.backbone_correlation(summary)
            figures["backbone_correlation.png"] = figure
            tracker.log_text(correlation.to_csv(), "backbone_correlation.csv")
        for file, figure in figures.items():
            tracker.log_figure(figure, file)
            plt.close(figure)
    metrics = {}
    for row in summary.itertuples(index=False):
        prefix = f"{row.dataset}.{row.backbone}.{row.head}" if len(names) > 1 else f"{row.backbone}.{row.head}"
        metrics[f"{prefix}.accuracy_mean"] = float(row.accuracy_mean)
        metrics[f"{prefix}.f1_macro_mean"] = float(row.f1_macro_mean)
    for row in comparison.itertuples(index=False):
        prefix = f"{row.dataset}.{row.backbone}" if len(names) > 1 else row.backbone
        metrics[f"{prefix}.{row.head}_minus_{row.baseline}"] = float(row.mean_diff)
    counts = folds["status"].value_counts().to_dict()
    wall_time = time.perf_counter() - started
    metrics.update(
        {
            "trials_finished": int(counts.get("FINISHED", 0)),
            "trials_failed": int(counts.get("FAILED", 0)),
            "trials_stopped": int(counts.get("STOPPED", 0)),
            "wall_time_s": wall_time,
        }
    )
    tracker.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN (one fold) is not logged
    tracker.end("FINISHED")
    return ZooResult(
        folds,
        summary,
        comparison,
        tracker.tracking_uri,
        tracker.experiment_id,
        tracker.parent_run_id,
        tracker.search_name,
        wall_time,
    )
