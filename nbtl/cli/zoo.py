"""``nbtl zoo``: compare backbones and heads by cross-validation, the way the papers do, in one command."""

from __future__ import annotations

import argparse

from nbtl.cli.common import (
    DATA_HELP,
    DEFAULT_SPACE,
    add_data_flags,
    add_ray_flags,
    add_tracking_flags,
    check_name,
    data_overrides,
    load_space,
    positive,
    progress,
)
from nbtl.errors import ConfigError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="compare backbones x heads by stratified k-fold cross-validation (Ray Tune, tracked in MLflow)",
        description="A zoo study: every dataset x backbone x head x fold x seed is a Ray Tune trial and an MLflow "
        "child run of the study's parent run. --mode frozen (Puls et al.) trains a new head on the frozen "
        "backbone's last-block features (nbtl fit's cache); --mode finetune (Albardi et al.) fine-tunes the "
        "whole network with one recipe (the conventional one, the space's fixed values and the flags) and the "
        "space's augmentation for every backbone. Prints mean +- sd per cell of accuracy and macro / weighted "
        "precision, recall and F1, and every head against the linear one (mean difference with its 95 % "
        "t-interval, wins / losses); saves the table as CSV and logs tables and plots on the parent run.",
        epilog="examples: nbtl zoo digits --backbones efficientnet_lite0,efficientnet_lite1 --heads linear,spinal;  "
        "nbtl zoo digits fashion-mnist --backbones efficientnet_lite0,efficientnet_lite1 --mode finetune "
        "--folds 3 --time-budget 30m   (several datasets: give several DATA, or --data repeated)",
    )
    p.add_argument("data", nargs="*", metavar="DATA", help=DATA_HELP + "; several for a study across datasets")
    p.add_argument("--data", action="append", dest="more_data", metavar="DATA", help="one more dataset (repeatable)")
    p.add_argument("--backbones", required=True, help="comma-separated backbone names (see nbtl backbones)")
    p.add_argument(
        "--heads", default="linear,spinal", help="comma-separated heads: linear, mlp, spinal (default: %(default)s)"
    )
    p.add_argument("--mode", choices=("frozen", "finetune"), default="frozen", help="default: %(default)s")
    p.add_argument("--folds", type=int, default=5, help="stratified folds (default: %(default)s)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repetitions of the cross-validation, each with its own folds and training seed (default: %(default)s)",
    )
    p.add_argument(
        "--space",
        help=f"search space whose data settings (image size, validation share, augmentation) and fixed values "
        f"(epochs, batch size, optimizer...) the study uses (default: {DEFAULT_SPACE})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="finetune: epochs per fold (default: the space's); frozen: passes over the fold's features (default: 100)",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="finetune: lr of blocks and head (default: the conventional 0.03); frozen: Adam's lr (default: 1e-3)",
    )
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: the space's; frozen: 64)")
    p.add_argument(
        "--head-width", type=int, help="hidden width of the mlp and spinal heads (default: the space's; frozen: 128)"
    )
    add_data_flags(
        p, "default: the space's", "seed of the per-class choice, the folds and the first training seed (default: 0)"
    )
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="end the study when this much wall time has passed (e.g. 900, 90s, 15m, 1.5h): folds not started "
        "by then are left out of the table (Ray Tune's time_budget_s)",
    )
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as many as the CPUs allow)")
    add_ray_flags(
        p,
        "where Ray Tune keeps the trials' results (default: a temporary folder)",
        "CPUs per trial (default: %(default)s)",
        "GPUs per trial, fractions allowed (default: %(default)s)",
        cpu_default=1.0,
        gpu_default=0.0,
    )
    add_tracking_flags(p, "MLflow experiment (default: zoo-<dataset names>)")
    p.add_argument("--out", help="CSV file for the table (default: nbtl_zoo_<name>.csv here)")
    p.add_argument("--no-cache", action="store_true", help="frozen: neither read nor write nbtl fit's feature cache")
    p.set_defaults(func=run)


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{flag} needs at least one name, e.g. {flag} linear,spinal")
    return names


def recipe_from(args: argparse.Namespace, space) -> dict:
    """The study's one recipe: frozen, the head's training (HeadRecipe fields); finetune, the space's fixed
    TrialConfig values (but backbone, head and seed, which are the cell's), then the flags."""
    if args.mode == "frozen":
        flags = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "width": args.head_width}
        return {k: v for k, v in flags.items() if v is not None}
    from nbtl.config import TrialConfig

    recipe = {
        p.name: p.value
        for p in space.parameters
        if p.fixed and p.name in TrialConfig.keys() and p.name not in ("backbone", "head", "seed")
    }
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "head_width": args.head_width}
    recipe.update({k: v for k, v in flags.items() if v is not None})
    if args.lr is not None:
        recipe.update(lr=args.lr, head_lr=args.lr)
    return recipe


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from nbtl.cli.common import slug
    from nbtl.data.settings import DataSettings
    from nbtl.search.units import parse_duration
    from nbtl.zoo.report import display_table
    from nbtl.zoo.study import ZooOptions, run_zoo

    for flag in ("epochs", "batch_size", "head_width", "max_concurrent"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.lr is not None and not args.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    check_name(args.name)
    data = list(args.data) + list(args.more_data or [])
    if not data:
        raise ConfigError(
            "nbtl zoo needs a dataset: nbtl zoo DATA --backbones A,B (several: DATA DATA, or --data repeated)"
        )
    budget = None
    if args.time_budget is not None:
        try:
            budget = parse_duration(args.time_budget)
        except ConfigError as error:
            raise ConfigError(f"--time-budget: {error}") from None
    space = load_space(args.space or DEFAULT_SPACE)
    settings = DataSettings.from_space(space, data_overrides(args))
    options = ZooOptions(
        data=data,
        backbones=_names(args.backbones, "--backbones"),
        heads=_names(args.heads, "--heads"),
        settings=settings,
        mode=args.mode,
        folds=args.folds,
        seeds=args.seeds,
        recipe=recipe_from(args, space),
        name=args.name,
        time_budget=budget,
        address=args.address,
        tracking_uri=args.tracking_uri,
        storage_path=args.storage_path,
        max_concurrent=args.max_concurrent,
        cpu=args.cpu,
        gpu=args.gpu,
        use_cache=not args.no_cache,
    )
    result = run_zoo(options, print_fn=progress)

    with pd.option_context("display.max_columns", None, "display.width", 250, "display.float_format", "{:.4g}".format):
        print(f"\nCells (mean ± sd over {options.folds} folds x {options.seeds} seed(s)):")
        print(
            display_table(result.summary).to_string(index=False) if not result.summary.empty else "(no fold finished)"
        )
        if not result.comparison.empty:
            print("\nHeads against the baseline (accuracy difference per fold, 95% t-interval over folds x seeds):")
            print(result.comparison.drop(columns=["metric"]).to_string(index=False))
    failed = result.folds[result.folds["status"] != "FINISHED"]
    if not failed.empty:
        print(f"\n{len(failed)} trial(s) did not finish: {failed['status'].value_counts().to_dict()}")
    out = args.out or f"nbtl_zoo_{slug(result.name)}.csv"
    try:
        result.summary.to_csv(out, index=False)
    except OSError as error:
        raise ConfigError(f"cannot write --out {out}: {error.strerror or error}") from error
    print(f"\nTable: {out}  ({result.wall_time_s:.0f}s)")
    print(f"MLflow: {result.tracking_uri} experiment {result.experiment_id}, parent run {result.parent_run_id}")
    return 0 if (result.folds["status"] == "FINISHED").any() else 1
