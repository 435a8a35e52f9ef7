"""What ``nbtl search`` does (its parser is :mod:`nbtl.cli.search`): run or resume the search, then print its table
of trials, the best trial and config, and where MLflow keeps them."""

from __future__ import annotations

import argparse

import pandas as pd

from nbtl.backbones import parse_weights
from nbtl.cli.common import check_name, live_status, log, positive, progress
from nbtl.cli.run_common import data_overrides, time_budget
from nbtl.config import dump_config
from nbtl.errors import ConfigError
from nbtl.heuristics.recommend import load_recommended_configs
from nbtl.search import load_space
from nbtl.search.options import open_rdb
from nbtl.search.runner import SearchOptions, resume_search, run_search
from nbtl.search.settings import check_subsample
from nbtl.search.start import StartPoints
from nbtl.search.units import parse_size

#: Flags a resumed search takes from its saved state instead.
RESUME_IGNORES = (
    "data",
    "trials",
    "max_concurrent",
    "name",
    "image_size",
    "per_class",
    "classes",
    "seed",
    "cpu",
    "gpu",
    "warm_start",
    "time_budget",
    "keep_weights",
    "register",
    "cache_size",
    "subsample",
    "optuna_storage",
    "weights",
)


def run(args: argparse.Namespace) -> int:
    for flag in ("trials", "max_concurrent"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    overrides = data_overrides(args)
    check_name(args.name)
    if args.keep_weights is not None and args.keep_weights < 0:
        raise ConfigError(f"--keep-weights {args.keep_weights}: give 0 or more trials")
    if args.register is not None and args.no_register:
        raise ConfigError("--register and --no-register contradict each other: give one of them")
    if args.resume:
        check_name(args.resume, "--resume")
        ignored = [f"--{k.replace('_', '-')}" for k in RESUME_IGNORES if getattr(args, k) is not None]
        if args.space or ignored:
            raise ConfigError(
                f"--resume {args.resume} continues a search with its own space and settings: "
                f"drop {', '.join(([args.space] if args.space else []) + ignored)}"
            )
        with live_status() as (say, status):
            result = resume_search(
                args.resume,
                storage_path=args.storage_path,
                address=args.address,
                tracking_uri=args.tracking_uri,
                print_fn=say,
                keep_checkpoints=args.keep_checkpoints,
                status_fn=status,
            )
        return report(result)
    if not args.space or not args.data:
        raise ConfigError("nbtl search needs a SPACE file and --data (or --resume NAME); see nbtl search --help")
    budget = time_budget(args.time_budget)
    if args.optuna_storage is not None:  # a database Optuna cannot open is refused before any image is decoded
        open_rdb(args.optuna_storage)
    space = load_space(args.space)
    if args.name is None:
        check_name(space.name, f"{space.path}: name")
    warm_start = _warm_start(args.warm_start, space) if args.warm_start else []
    options = SearchOptions(
        weights=parse_weights(args.weights, space.backbones()),
        optuna_storage=args.optuna_storage,
        cache_size=parse_size(args.cache_size, "--cache-size") if args.cache_size is not None else None,
        subsample=check_subsample(args.subsample, "--subsample") if args.subsample is not None else None,
        data=args.data,
        name=args.name,
        trials=args.trials,
        max_concurrent=args.max_concurrent,
        address=args.address,
        tracking_uri=args.tracking_uri,
        storage_path=args.storage_path,
        cpu=args.cpu,
        gpu=args.gpu,
        warm_start=warm_start,
        time_budget=budget,
        recommend=not args.no_recommend,
        keep_checkpoints=args.keep_checkpoints,
        keep_weights=args.keep_weights,
        register=args.register,
        register_model=not args.no_register,
        **overrides,
    )
    with live_status() as (say, status):
        result = run_search(space, options, print_fn=say, status_fn=status)
    return report(result)


def _warm_start(path: str, space) -> list[dict]:
    """The configs of ``path`` as points of ``space``, saying what had to move to fit it."""
    found = StartPoints()
    for number, config in enumerate(load_recommended_configs(path), start=1):
        found.add(space, config, f"{number} ({path})", log.info, kind="warm start")
    progress(f"warm start: {len(found.points)} config(s) from {path} run first")
    return found.points


def no_trial_finished(table) -> str:
    """Why a search has no best trial, from its results table: trials that failed (their errors are recorded), or
    none that reported an epoch before the search ended (a time budget too short for one epoch)."""
    failed = int((table["status"] == "FAILED").sum()) if "status" in table else 0
    if failed:
        return (
            f"No trial finished: {failed} of {len(table)} failed; their errors are above, in the error column of "
            "results.csv and on their FAILED runs in MLflow (tag nbtl.error)."
        )
    return (
        f"No trial finished: {len(table)} trial(s) started and none reported an epoch before the search ended "
        "(the time budget ran out first); give a longer --time-budget, or a smaller image size or data."
    )


#: The console's trials table: this many rows, and the columns that tell trials apart (the rest: results.csv).
CONSOLE_ROWS, CONSOLE_PARAMS = 10, 5
_ALWAYS = ("trial_id", "source", "stop_reason", "best_val_accuracy", "test_accuracy")
_NOT_PARAMS = {"run_id", "status", "error", "seed", "finished_at_s", "epoch", "best_epoch", "prefix_blocks"}


def console_table(table) -> tuple[list[str], int]:
    """The columns and the number of rows of a search's results table to print: its id, source, stop reason, and
    scores, then the ``CONSOLE_PARAMS`` searched settings that vary most among the trials shown (the fewest
    repeated values), and the error column when a trial failed."""
    head = table.head(CONSOLE_ROWS)
    always = [c for c in _ALWAYS if c in table.columns]
    metrics = {c for c in table.columns if c.startswith(("best_val", "test_", "val_", "train_", "prefix_"))}
    candidates = [c for c in table.columns if c not in {*always, *_NOT_PARAMS, *metrics}]
    varying = [c for c in candidates if head[c].astype(str).nunique() > 1]
    varying.sort(key=lambda c: -head[c].astype(str).nunique())  # stable: the table's order among equals
    shown = always + [c for c in table.columns if c in set(varying[:CONSOLE_PARAMS])]
    if "error" in table.columns and head["error"].astype(bool).any():
        shown.append("error")
    return shown, CONSOLE_ROWS


def report(result) -> int:
    """Print the trials table, the best trial and config, and where MLflow keeps them; 1 when none finished."""
    table = result.table
    shown, rows = console_table(table)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        more = f"; all {len(table)} trials and every column in {result.experiment_path}/results.csv"
        print(f"\nTrials (best first, the top {min(rows, len(table))}{more}):")
        print(table[shown].head(rows).to_string(index=False))
    if result.best is None:
        print("\n" + no_trial_finished(result.table))
        return 1
    best = result.best
    print(
        f"\nBest trial: {best['trial_id']} (MLflow run {best['run_id']}): "
        f"best_val_accuracy={best['best_val_accuracy']:.4f} test_accuracy={best['test_accuracy']:.4f}"
    )
    print("Best config:")
    print(dump_config(best["config"]), end="")
    if result.tracking_uri.startswith(("http://", "https://")):
        where = (
            f"open {result.tracking_uri.rstrip('/')}/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
        )
    else:
        where = f"open with: mlflow ui --backend-store-uri {result.tracking_uri}"
    print(
        f"\nMLflow: {result.tracking_uri} experiment {result.experiment_id}, parent run {result.parent_run_id}  "
        f"({where})"
    )
    print(f"Results: {result.experiment_path}")
    if result.model is not None:
        logged = result.model["logged"]
        uri = logged.uri
        print(f"Model: {uri}  (load with mlflow.pyfunc.load_model({uri!r}); classify with: nbtl predict {uri} IMAGES)")
    return 0
