"""``nbtl search``: run (or resume) a search over a YAML space and print its table and best config."""

from __future__ import annotations

import argparse

from nbtl.cli.common import (
    DATA_HELP,
    add_data_flags,
    add_ray_flags,
    add_tracking_flags,
    add_weights_flag,
    check_name,
    data_overrides,
    live_status,
    load_space,
    log,
    parse_weights,
    positive,
    progress,
)
from nbtl.errors import ConfigError
from nbtl.models import KEEP_WEIGHTS

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
    "optuna_storage",
    "weights",
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="run a non-binary transfer search (Ray Tune + Optuna, tracked in MLflow)",
        description="Run a search over a YAML space: Optuna proposes trials, Ray Tune runs them (embedded Ray, "
        "or a cluster with --address) and stops weak ones with ASHA; every search is an MLflow parent "
        "run and every trial a child run. Ends with a table of trials and the best config.",
        epilog="examples: nbtl search default --data digits --trials 8;  "
        "nbtl search --resume default   (continue an interrupted search)",
    )
    p.add_argument(
        "space",
        nargs="?",
        help="search space: a YAML file, or the name of a space shipped with nbtl (default, tiny, binary, meta)",
    )
    p.add_argument(
        "--resume",
        metavar="NAME",
        help="continue the interrupted search NAME (its folder under --storage-path) to its trial count; "
        "takes no SPACE or --data: both come from the search's saved state",
    )
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--trials", type=int, help="number of trials (default: the space's search.trials)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: the space's)")
    add_tracking_flags(p, "search name = MLflow experiment and results folder (default: the space's name)")
    add_ray_flags(
        p,
        "where Ray Tune keeps trial results and checkpoints (default: ./nbtl_results)",
        "CPUs per trial (default: the space's resources.cpu)",
        "GPUs per trial, fractions allowed (default: the space's resources.gpu)",
    )
    add_data_flags(p, "default: the space's", "seed of the split, the sampler and the trials (default: the space's)")
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="stop starting trials and end running ones when this much wall time has passed since the "
        "search started (data loading and start points included), e.g. 900, 90s, 15m, 1.5h; "
        "without --trials, trials run until the budget ends (Ray Tune's time_budget_s)",
    )
    p.add_argument(
        "--no-recommend",
        action="store_true",
        help="do not measure the data's fit to start from nbtl recommend's configs (nor the learned prior, when the "
        "space enables it, that reads it); the probe and the conventional recipe still run first",
    )
    p.add_argument(
        "--warm-start",
        metavar="FILE",
        help="run these configs first: a YAML from nbtl recommend (all its configs, best first) or a plain "
        "config such as a search's best_config.yaml; each is moved to the nearest point of the space",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every trial's checkpoints when the search ends (default: delete them once the search "
        "finished; an interrupted search keeps what --resume needs)",
    )
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's model in the MLflow Model Registry as NAME (default: the search's name); "
        "it is logged on the search's parent run either way",
    )
    p.add_argument(
        "--no-register", action="store_true", help="log the best trial's model on the parent run, do not register it"
    )
    p.add_argument(
        "--keep-weights",
        type=int,
        metavar="K",
        help="the best K trials keep their best-epoch weights on their MLflow runs, for nbtl ensemble "
        f"(default: {KEEP_WEIGHTS}; 0 keeps none and logs no model)",
    )
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        help="the most the search's frozen-prefix store may take on disk, e.g. 20G or 500M; the entries used "
        "longest ago are removed to stay under it (default: no limit)",
    )
    add_weights_flag(p)
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="keep the Optuna study in this database (e.g. sqlite:///optuna.db, postgresql://...), where "
        "optuna-dashboard and optuna.load_study open it (default: optuna.db in the search's results folder)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nbtl.search.runner import SearchOptions, run_search
    from nbtl.search.units import parse_duration, parse_size

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
        from nbtl.search.runner import resume_search

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
    budget = None
    if args.time_budget is not None:
        try:
            budget = parse_duration(args.time_budget)
        except ConfigError as error:
            raise ConfigError(f"--time-budget: {error}") from None
    if args.optuna_storage is not None:  # a database Optuna cannot open is refused before any image is decoded
        from nbtl.search.study_store import open_rdb

        open_rdb(args.optuna_storage)
    space = load_space(args.space)
    if args.name is None:
        check_name(space.name, f"{space.path}: name")
    warm_start = _warm_start(args.warm_start, space) if args.warm_start else []
    options = SearchOptions(
        weights=parse_weights(args.weights, space.backbones()),
        optuna_storage=args.optuna_storage,
        cache_size=parse_size(args.cache_size, "--cache-size") if args.cache_size is not None else None,
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
    from nbtl.heuristics.recommend import load_recommended_configs
    from nbtl.search.start import StartPoints

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
    import pandas as pd

    from nbtl.config import dump_config

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
